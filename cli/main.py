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
from pathlib import Path


def _export(prefix: str, args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"{prefix}{name.upper()}"] = str(value)


def _origin_serve(args: argparse.Namespace) -> None:
    from atcdn.cli.serve import run
    from atcdn.core.settings import OriginSettings
    from atcdn.origin.metrics import prepare_multiprocess_dir

    _export("ATCDN_ORIGIN_", args, ["host", "port", "data_dir", "workers", "server"])
    settings = OriginSettings()
    prepare_multiprocess_dir(settings.data_dir / "metrics")  # before workers import prometheus_client
    run("atcdn.origin.app:create_app", host=settings.host, port=settings.port,
        workers=settings.workers, server=settings.server)


def _edge_serve(args: argparse.Namespace) -> None:
    from atcdn.cli.serve import run
    from atcdn.core.settings import EdgeSettings

    _export("ATCDN_EDGE_", args,
            ["host", "port", "origin", "cache_dir", "cache_size", "workers", "server"])
    settings = EdgeSettings()
    from atcdn.edge.takedown import Node
    from atcdn.origin.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(Node(settings.cache_dir).metrics_dir)  # before any worker starts
    run("atcdn.edge.app:create_app", host=settings.host, port=settings.port,
        workers=settings.workers, server=settings.server)


def _up(args: argparse.Namespace) -> None:
    from atcdn.cli.up import up

    up(data_dir=args.data_dir, origin_port=args.origin_port, edge_port=args.edge_port)


def _status(args: argparse.Namespace) -> None:
    from atcdn.cli.status import run

    screen, healthy = run(args.urls)
    print(screen)
    if not healthy:
        sys.exit(1)


def _report(args: argparse.Namespace) -> None:
    from atcdn.cli.report import run

    if not args.node and not args.prometheus:
        sys.exit("atcdn report: give --node URL (one per node) or --prometheus URL --period")
    try:
        print(run(args.node, args.prometheus, args.period, args.prices, args.json))
    except (RuntimeError, ValueError, OSError) as exc:
        sys.exit(f"atcdn report: {exc}")


def _control_settings():
    from atcdn.core.settings import ControlSettings

    return ControlSettings()


def _print_json(value: object) -> None:
    import json

    print(json.dumps(value, indent=None, sort_keys=True))


def _register_edge(args: argparse.Namespace) -> None:
    from atcdn.control.route53 import EdgeRecord, register_edge

    edge = EdgeRecord(name=args.name, ipv4=args.ip, ipv6=args.ipv6, weight=args.weight,
                      latency_region=args.latency_region)
    if edge.weight is None and edge.latency_region is None:
        edge = EdgeRecord(name=args.name, ipv4=args.ip, ipv6=args.ipv6, weight=100)
    check_id = register_edge(edge, _control_settings())
    _print_json({"edge": edge.name, "health_check_id": check_id})


def _deregister_edge(args: argparse.Namespace) -> None:
    from atcdn.control.route53 import deregister_edge

    removed = deregister_edge(args.name, _control_settings())
    _print_json({"edge": args.name, "records_removed": removed})
    if not removed:
        sys.exit(f"no records for edge {args.name!r}")


def _list_edges(args: argparse.Namespace) -> None:
    from atcdn.control.route53 import edge_records

    for record in edge_records(_control_settings()):
        _print_json(record)


def _publish(args: argparse.Namespace) -> None:
    from atcdn.core.feed import Feed

    feed = Feed(_control_settings())
    try:
        event = feed.publish(args.action, cid=args.cid, did=args.did, reason=args.reason)
    except ValueError as exc:
        sys.exit(f"atcdn control {args.action}: {exc}")
    _print_json(event.as_dict())


def _feed(args: argparse.Namespace) -> None:
    from atcdn.core.feed import Feed

    for event in Feed(_control_settings()).events(after=args.after):
        _print_json(event.as_dict())


def _init_feed(args: argparse.Namespace) -> None:
    from atcdn.core.feed import Feed

    feed = Feed(_control_settings())
    feed.ensure_table()
    _print_json({"table": feed.table, "status": "ready"})


def _add_control(roles: argparse._SubParsersAction) -> None:
    control = roles.add_parser(
        "control", help="the AWS control plane: edge DNS records and the takedown feed")
    cmds = control.add_subparsers(dest="command", required=True)

    register = cmds.add_parser("register-edge", help="add an edge's Route53 records and health check")
    register.add_argument("--name", required=True, help="the edge's unique name (set identifier)")
    register.add_argument("--ip", required=True, help="the edge's public IPv4 address")
    register.add_argument("--ipv6", help="the edge's public IPv6 address (adds an AAAA record)")
    routing = register.add_mutually_exclusive_group()
    routing.add_argument("--weight", type=int, help="weighted routing (0..255; default 100)")
    routing.add_argument("--latency-region", help="latency routing: the edge's AWS region")
    register.set_defaults(func=_register_edge)

    deregister = cmds.add_parser("deregister-edge", help="remove an edge's records and health check")
    deregister.add_argument("--name", required=True)
    deregister.set_defaults(func=_deregister_edge)

    cmds.add_parser("list-edges", help="print the registered edge records").set_defaults(
        func=_list_edges)

    cmds.add_parser("init-feed", help="create the takedown feed table if missing").set_defaults(
        func=_init_feed)

    for action, text in (("takedown", "publish a takedown"), ("restore", "publish a restore")):
        cmd = cmds.add_parser(action, help=f"{text} of a blob (--cid) or an account (--did)")
        target = cmd.add_mutually_exclusive_group(required=True)
        target.add_argument("--cid")
        target.add_argument("--did")
        cmd.add_argument("--reason", default="")
        cmd.set_defaults(func=_publish, action=action)

    feed = cmds.add_parser("feed", help="list the takedown feed, oldest first (JSON lines)")
    feed.add_argument("--after", type=int, default=0, help="only events after this sequence")
    feed.set_defaults(func=_feed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atcdn", description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)

    origin = roles.add_parser("origin", help="the content-addressed blob store")
    origin_cmds = origin.add_subparsers(dest="command", required=True)
    serve = origin_cmds.add_parser("serve", help="run the origin HTTP API")
    serve.add_argument("--host", help="listen address (ATCDN_ORIGIN_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (ATCDN_ORIGIN_PORT; default 8100)")
    serve.add_argument("--data-dir", help="blobs, index, metrics (ATCDN_ORIGIN_DATA_DIR;"
                                          " default atcdn-data/origin)")
    serve.add_argument("--workers", type=int,
                       help="server processes (ATCDN_ORIGIN_WORKERS; default 1)")
    serve.add_argument("--server", choices=["uvicorn", "granian"],
                       help="ASGI server (ATCDN_ORIGIN_SERVER; default uvicorn)")
    serve.set_defaults(func=_origin_serve)

    edge = roles.add_parser("edge", help="an edge cache node")
    edge_cmds = edge.add_subparsers(dest="command", required=True)
    serve = edge_cmds.add_parser("serve", help="run the edge HTTP server")
    serve.add_argument("--host", help="listen address (ATCDN_EDGE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (ATCDN_EDGE_PORT; default 8200)")
    serve.add_argument("--origin", help="origin base URL (ATCDN_EDGE_ORIGIN;"
                                        " default http://127.0.0.1:8100)")
    serve.add_argument("--cache-dir", help="disk tier, locks, takedowns, metrics"
                                           " (ATCDN_EDGE_CACHE_DIR; default atcdn-data/edge)")
    serve.add_argument("--cache-size", type=int, help="disk cache budget in bytes"
                                                      " (ATCDN_EDGE_CACHE_SIZE; default 10 GiB)")
    serve.add_argument("--workers", type=int,
                       help="server processes (ATCDN_EDGE_WORKERS; default 2)")
    serve.add_argument("--server", choices=["uvicorn", "granian"],
                       help="ASGI server (ATCDN_EDGE_SERVER; default uvicorn)")
    serve.set_defaults(func=_edge_serve)

    up_cmd = roles.add_parser("up", help="run the whole CDN on localhost with embedded defaults")
    up_cmd.add_argument("--data-dir", default="atcdn-data",
                        help="origin data, edge cache, token and logs (default atcdn-data)")
    up_cmd.add_argument("--origin-port", type=int, default=8100,
                        help="the origin's port on 127.0.0.1 (default 8100)")
    up_cmd.add_argument("--edge-port", type=int, default=8200,
                        help="the edge's port on 127.0.0.1 (default 8200)")
    up_cmd.set_defaults(func=_up)

    status = roles.add_parser("status", help="one screen of every node's numbers and problems"
                              " (exit status 1 when any node is unhealthy)")
    status.add_argument("urls", nargs="+", metavar="URL", help="base URL of an origin or edge")
    status.set_defaults(func=_status)

    report = roles.add_parser("report", help="what the traffic served cost on this deployment"
                              " and what it would have cost from AWS")
    report.add_argument("--node", action="append", default=[], metavar="URL",
                        help="a node to read counters from (repeat; counts since it started)")
    report.add_argument("--prometheus", metavar="URL",
                        help="read traffic from this Prometheus instead (needs --period)")
    report.add_argument("--period", help="e.g. 30d, 12h (default with --node: since the"
                        " nodes started)")
    report.add_argument("--prices", type=Path, metavar="FILE",
                        help="price table (default: the built-in dated table, cli/prices.toml)")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")
    report.set_defaults(func=_report)

    _add_control(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
