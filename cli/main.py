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


INGEST_FLAGS = ["firehose", "origin", "data_dir", "status_port", "pds_concurrency", "pds_rate",
                "workers", "mime_types", "max_blob_bytes"]


def _ingest_settings(args: argparse.Namespace):
    import logging

    from atcdn.core.settings import IngestSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is too many
    _export("ATCDN_INGEST_", args, INGEST_FLAGS)
    return IngestSettings()


def _ingest_follow(args: argparse.Namespace) -> None:
    import asyncio
    import signal

    from atcdn.ingest.follow import Fatal, Follower

    settings = _ingest_settings(args)
    if not settings.firehose:
        sys.exit("atcdn ingest follow: give --from ws(s)://host (or ATCDN_INGEST_FIREHOSE)")

    async def follow() -> None:
        follower = Follower(settings, settings.firehose)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, follower.stop)
        await follower.run()

    try:
        asyncio.run(follow())
    except (Fatal, ValueError) as exc:
        sys.exit(f"atcdn ingest follow: {exc}")


LABEL_FLAGS = ["labeler", "labeler_did", "origin", "data_dir", "label_values",
               "labels_status_port"]


def _ingest_labels(args: argparse.Namespace) -> None:
    import asyncio

    from atcdn.ingest.labels import Fatal, follow_labels

    _export("ATCDN_INGEST_", args, LABEL_FLAGS)
    try:
        asyncio.run(follow_labels(_ingest_settings(args)))
    except (Fatal, ValueError) as exc:
        sys.exit(f"atcdn ingest labels: {exc}")


def _ingest_backfill(args: argparse.Namespace) -> None:
    import asyncio

    from atcdn.ingest.backfill import Backfill, ListingFailed
    from atcdn.ingest.origin_api import OriginAuthError
    from atcdn.ingest.progress import make_reporter

    settings = _ingest_settings(args)

    async def backfill() -> dict[str, int]:
        job = Backfill(settings, make_reporter(), pds=args.pds, accounts=args.did,
                       page_size=args.page_size)
        return await job.run()

    try:
        summary = asyncio.run(backfill())
    except (ListingFailed, OriginAuthError, ValueError) as exc:
        sys.exit(f"atcdn ingest backfill: {exc} (state kept: run again to resume)")
    _print_json(summary)
    if summary["failed"] or summary["accounts_failed"]:
        sys.exit(1)


def _ingest_status(args: argparse.Namespace) -> None:
    from atcdn.ingest.report import status

    report, healthy = status(_ingest_settings(args), args.url)
    _print_json(report)
    if not healthy:
        sys.exit(1)


def _add_ingest(roles: argparse._SubParsersAction) -> None:
    ingest = roles.add_parser(
        "ingest", help="follow a firehose or backfill PDSes: their blobs into the origin")
    cmds = ingest.add_subparsers(dest="command", required=True)

    def common(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--origin", help="origin base URL (ATCDN_INGEST_ORIGIN; "
                         "default http://127.0.0.1:8100; token from ATCDN_ORIGIN_TOKEN)")
        cmd.add_argument("--data-dir", help="cursor, record index, backfill state, spool "
                         "(ATCDN_INGEST_DATA_DIR; default atcdn-data/ingest)")
        cmd.add_argument("--pds-concurrency", type=int, help="getBlob requests at once per PDS "
                         "(ATCDN_INGEST_PDS_CONCURRENCY; default 4)")
        cmd.add_argument("--pds-rate", type=float, help="getBlob requests per second per PDS "
                         "(ATCDN_INGEST_PDS_RATE; default 10)")
        cmd.add_argument("--workers", type=int, help="blobs handled at once "
                         "(ATCDN_INGEST_WORKERS; default 16)")
        cmd.add_argument("--mime-types", help="MIME patterns to fetch "
                         "(ATCDN_INGEST_MIME_TYPES; default 'image/*,video/*')")
        cmd.add_argument("--max-blob-bytes", type=int, help="larger blobs are skipped "
                         "(ATCDN_INGEST_MAX_BLOB_BYTES; default 300 MiB)")

    follow = cmds.add_parser("follow", help="subscribe to subscribeRepos and store new blobs")
    follow.add_argument("--from", dest="firehose", metavar="WS_URL",
                        help="ws(s)://host[:port] of a relay or PDS (ATCDN_INGEST_FIREHOSE)")
    follow.add_argument("--status-port", type=int, help="port of /health and /metrics on "
                        "127.0.0.1, 0 for none (ATCDN_INGEST_STATUS_PORT; default 8300)")
    common(follow)
    follow.set_defaults(func=_ingest_follow)

    labels = cmds.add_parser("labels", help="follow a labeler (subscribeLabels) and take down "
                             "what its signed takedown labels name")
    labels.add_argument("--from", dest="labeler", metavar="WS_URL",
                        help="ws(s)://host[:port] of the labeler (ATCDN_INGEST_LABELER)")
    labels.add_argument("--labeler-did", help="the labeler's DID; its #atproto_label key must "
                        "sign every label (ATCDN_INGEST_LABELER_DID)")
    labels.add_argument("--label-values", help="comma-separated values that take a subject "
                        "down (ATCDN_INGEST_LABEL_VALUES; default '!takedown,!suspend')")
    labels.add_argument("--status-port", dest="labels_status_port", type=int,
                        help="port of /health and /metrics on 127.0.0.1, 0 for none "
                        "(ATCDN_INGEST_LABELS_STATUS_PORT; default 8301)")
    labels.add_argument("--origin", help="origin base URL (ATCDN_INGEST_ORIGIN; "
                        "default http://127.0.0.1:8100; token from ATCDN_ORIGIN_TOKEN)")
    labels.add_argument("--data-dir", help="cursor, label state; the record index of "
                        "`ingest follow` when shared (ATCDN_INGEST_DATA_DIR)")
    labels.set_defaults(func=_ingest_labels)

    backfill = cmds.add_parser("backfill", help="store every blob of a PDS or of some accounts")
    target = backfill.add_mutually_exclusive_group(required=True)
    target.add_argument("--pds", help="PDS base URL: every account it lists (listRepos)")
    target.add_argument("--did", nargs="+", help="these accounts (their PDS from their DID)")
    backfill.add_argument("--page-size", type=int, default=1000,
                          help="listRepos/listBlobs page size (default 1000)")
    common(backfill)
    backfill.set_defaults(func=_ingest_backfill)

    status = cmds.add_parser("status", help="print the saved cursor and state (and a running "
                             "follower's health with --url); exit 1 if unhealthy")
    status.add_argument("--data-dir", help="as given to follow/backfill")
    status.add_argument("--url", help="a running follower's status URL, e.g. "
                        "http://127.0.0.1:8300")
    status.set_defaults(func=_ingest_status)


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

    _add_control(roles)
    _add_ingest(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
