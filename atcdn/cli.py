"""The ``atcdn`` command: one CLI, a subcommand per role.

Flags are a convenience over the ``ATCDN_*`` environment variables: each flag given is
written to its variable, then the server's app factory reads the settings from the
environment (in every worker process).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _export(prefix: str, args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"{prefix}{name.upper()}"] = str(value)


def _origin_serve(args: argparse.Namespace) -> None:
    from atcdn.serve import run
    from atcdn.settings import OriginSettings
    from origin.metrics import prepare_multiprocess_dir

    _export("ATCDN_ORIGIN_", args, ["host", "port", "data_dir", "workers", "server"])
    settings = OriginSettings()
    prepare_multiprocess_dir(settings.data_dir)  # before workers import prometheus_client
    run("origin.app:create_app", host=settings.host, port=settings.port,
        workers=settings.workers, server=settings.server)


def _edge_serve(args: argparse.Namespace) -> None:
    from atcdn.serve import run
    from atcdn.settings import EdgeSettings

    _export("ATCDN_EDGE_", args,
            ["host", "port", "origin", "cache_dir", "cache_size", "workers", "server"])
    settings = EdgeSettings()
    from edge.metrics import prepare_dir
    from edge.takedown import Node

    prepare_dir(Node(settings.cache_dir).metrics_dir)  # before any worker starts
    run("edge.app:create_app", host=settings.host, port=settings.port,
        workers=settings.workers, server=settings.server)


def _up(args: argparse.Namespace) -> None:
    from atcdn.up import up

    up(data_dir=args.data_dir, origin_port=args.origin_port, edge_port=args.edge_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atcdn", description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)

    origin = roles.add_parser("origin", help="the content-addressed blob store")
    origin_cmds = origin.add_subparsers(dest="command", required=True)
    serve = origin_cmds.add_parser("serve", help="run the origin HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.add_argument("--workers", type=int)
    serve.add_argument("--server", choices=["granian", "uvicorn"])
    serve.set_defaults(func=_origin_serve)

    edge = roles.add_parser("edge", help="an edge cache node")
    edge_cmds = edge.add_subparsers(dest="command", required=True)
    serve = edge_cmds.add_parser("serve", help="run the edge HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--origin", help="origin base URL")
    serve.add_argument("--cache-dir")
    serve.add_argument("--cache-size", type=int, help="disk cache budget in bytes")
    serve.add_argument("--workers", type=int)
    serve.add_argument("--server", choices=["granian", "uvicorn"])
    serve.set_defaults(func=_edge_serve)

    up_cmd = roles.add_parser("up", help="run the whole CDN on localhost with embedded defaults")
    up_cmd.add_argument("--data-dir", default="atcdn-data")
    up_cmd.add_argument("--origin-port", type=int, default=8100)
    up_cmd.add_argument("--edge-port", type=int, default=8200)
    up_cmd.set_defaults(func=_up)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
