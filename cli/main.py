"""The atcdn command: one CLI, a subcommand per role.

Flags are a convenience over the ``ATCDN_*`` environment variables: each flag given is
written to its variable, then the server's app factory reads the settings from the
environment (in every worker process).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from atcdn.cli.flags import add_setting, export, load, plain


def _logs():
    from atcdn.core.settings import LogSettings

    return load(LogSettings, "atcdn")


def _say(lines: list[str]) -> None:
    print("\n".join(lines), file=sys.stderr, flush=True)


def _origin_serve(args: argparse.Namespace) -> None:
    from atcdn.cli.banner import origin_banner
    from atcdn.cli.serve import check_port, run
    from atcdn.core.settings import OriginSettings
    from atcdn.origin.metrics import prepare_multiprocess_dir

    export(args)
    settings = load(OriginSettings, "atcdn origin serve")
    check_port(settings.host, settings.port)
    _say(origin_banner(settings, _logs()))
    prepare_multiprocess_dir(settings.data_dir / "metrics")  # before workers import prometheus_client
    run("atcdn.origin.app:create_app", host=settings.host, port=settings.port,
        workers=settings.workers, server=settings.server)


def _edge_serve(args: argparse.Namespace) -> None:
    from atcdn.cli.banner import edge_banner
    from atcdn.cli.serve import check_port, run
    from atcdn.core.settings import EdgeSettings

    export(args)
    settings = load(EdgeSettings, "atcdn edge serve")
    check_port(settings.host, settings.port)
    _say(edge_banner(settings, _logs()))
    from atcdn.edge.takedown import Node
    from atcdn.origin.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(Node(settings.cache_dir).metrics_dir)  # before any worker starts
    run("atcdn.edge.app:create_app", host=settings.host, port=settings.port,
        workers=settings.workers, server=settings.server)


def _up(args: argparse.Namespace) -> None:
    from atcdn.cli.up import up
    from atcdn.core.settings import UpSettings

    export(args)
    settings = load(UpSettings, "atcdn up")
    _logs()  # a bad ATCDN_LOG_* stops here, not in a child
    up(data_dir=settings.data_dir, origin_port=settings.origin_port,
       edge_port=settings.edge_port)


def _cid(args: argparse.Namespace) -> None:
    from atcdn.cli.push import print_cid

    for name in args.files:
        print_cid(name)


def _push(args: argparse.Namespace) -> None:
    from atcdn.cli.push import push
    from atcdn.core.settings import PushSettings

    export(args)
    sys.exit(push(args.paths, load(PushSettings, "atcdn push")))


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


def _origin_admin(args: argparse.Namespace) -> None:
    """takedown/restore straight at an origin (no AWS): its edges follow its feed."""
    import os

    import httpx

    token = os.environ.get("ATCDN_ORIGIN_ADMIN_TOKEN")
    if not token:
        sys.exit(f"atcdn control {args.action} --origin: set ATCDN_ORIGIN_ADMIN_TOKEN")
    body = {k: v for k, v in (("did", args.did), ("cid", args.cid)) if v}
    if args.reason:
        body["reason"] = args.reason
    response = httpx.post(f"{args.origin.rstrip('/')}/admin/{args.action}", json=body,
                          headers={"authorization": f"Bearer {token}"}, timeout=30,
                          trust_env=False)
    if response.status_code != 200:
        sys.exit(f"atcdn control {args.action}: HTTP {response.status_code} {response.text[:300]}")
    _print_json(response.json())


def _publish(args: argparse.Namespace) -> None:
    from atcdn.core.feed import Feed

    if args.origin:
        return _origin_admin(args)
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
        "control", help="the AWS control plane: edge DNS records and the takedown feed",
        description="The AWS control plane. Its settings are ATCDN_* variables only "
                    "(ATCDN_AWS_REGION, ATCDN_HOSTED_ZONE_ID, ATCDN_TAKEDOWN_TABLE...: "
                    "docs/configuration.md); AWS credentials come from boto3's usual places.")
    cmds = control.add_subparsers(dest="command", required=True)

    register = cmds.add_parser("register-edge", help="add an edge's Route53 records and health check")
    register.add_argument("--name", required=True,
                          help=plain("the edge's unique name (set identifier)", required=True))
    register.add_argument("--ip", required=True,
                          help=plain("the edge's public IPv4 address", required=True))
    register.add_argument("--ipv6", help=plain("the edge's public IPv6 address (adds AAAA)"))
    routing = register.add_mutually_exclusive_group()
    routing.add_argument("--weight", type=int,
                         help=plain("weighted routing, 0..255 (100 when no routing is given)"))
    routing.add_argument("--latency-region", help=plain("latency routing: the edge's AWS region"))
    register.set_defaults(func=_register_edge)

    deregister = cmds.add_parser("deregister-edge", help="remove an edge's records and health check")
    deregister.add_argument("--name", required=True,
                            help=plain("the edge's unique name", required=True))
    deregister.set_defaults(func=_deregister_edge)

    cmds.add_parser("list-edges", help="print the registered edge records").set_defaults(
        func=_list_edges)

    cmds.add_parser("init-feed", help="create the takedown feed table if missing").set_defaults(
        func=_init_feed)

    for action, text in (("takedown", "publish a takedown"), ("restore", "publish a restore")):
        cmd = cmds.add_parser(
            action, help=f"{text} of a blob (--cid), an account (--did) or one repo's blob "
                         "(both), to the AWS feed or (--origin) to an origin's own feed")
        cmd.add_argument("--cid", help=plain("the blob (everywhere, or with --did: in that repo)"))
        cmd.add_argument("--did", help=plain("the account (or with --cid: that repo's blob)"))
        cmd.add_argument("--reason", default="", help=plain("why, kept in the feed", ""))
        cmd.add_argument("--origin", help=plain(
            "origin base URL: record it there (its edges follow its feed) instead of the AWS"
            " feed; needs ATCDN_ORIGIN_ADMIN_TOKEN"))
        cmd.set_defaults(func=_publish, action=action)

    feed = cmds.add_parser("feed", help="list the takedown feed, oldest first (JSON lines)")
    feed.add_argument("--after", type=int, default=0,
                      help=plain("only events after this sequence number", 0))
    feed.set_defaults(func=_feed)


def _ingest_settings(args: argparse.Namespace, command: str):
    import logging

    from atcdn.core.settings import IngestSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is too many
    export(args)
    return load(IngestSettings, command)


def _ingest_follow(args: argparse.Namespace) -> None:
    import asyncio
    import signal

    from atcdn.ingest.follow import Fatal, Follower

    settings = _ingest_settings(args, "atcdn ingest follow")
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


def _ingest_labels(args: argparse.Namespace) -> None:
    import asyncio

    from atcdn.ingest.labels import Fatal, follow_labels

    settings = _ingest_settings(args, "atcdn ingest labels")
    if not settings.labeler or not settings.labeler_did:
        sys.exit("atcdn ingest labels: give --from ws(s)://labeler and --labeler-did DID")
    try:
        asyncio.run(follow_labels(settings))
    except (Fatal, ValueError) as exc:
        sys.exit(f"atcdn ingest labels: {exc}")


def _ingest_backfill(args: argparse.Namespace) -> None:
    import asyncio

    from atcdn.ingest.backfill import Backfill, ListingFailed
    from atcdn.ingest.origin_api import OriginAuthError
    from atcdn.ingest.progress import make_reporter

    settings = _ingest_settings(args, "atcdn ingest backfill")

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

    report, healthy = status(_ingest_settings(args, "atcdn ingest status"), args.url)
    _print_json(report)
    if not healthy:
        sys.exit(1)


def _add_ingest(roles: argparse._SubParsersAction) -> None:
    from atcdn.core.settings import IngestSettings

    ingest = roles.add_parser(
        "ingest", help="follow a firehose or backfill PDSes: their blobs into the origin")
    cmds = ingest.add_subparsers(dest="command", required=True, metavar="COMMAND")
    polite = ("origin", "data_dir", "pds_concurrency", "pds_rate", "workers", "mime_types",
              "max_blob_bytes")

    follow = cmds.add_parser(
        "follow", help="subscribe to subscribeRepos and store new blobs",
        description="Follow a relay's or PDS's firehose: store every new blob in the origin "
                    "(write token: ATCDN_ORIGIN_TOKEN) and apply #account takedowns.")
    add_setting(follow, IngestSettings, "firehose", "--from")
    for name in (*polite, "status_port"):
        add_setting(follow, IngestSettings, name)
    follow.set_defaults(func=_ingest_follow)

    labels = cmds.add_parser(
        "labels", help="follow a labeler (subscribeLabels) and take down what its signed "
                       "takedown labels name",
        description="Follow a labeler's subscribeLabels: verify each label against the "
                    "labeler's #atproto_label key and take down (or restore) the accounts and "
                    "record blobs its takedown labels name, at the origin.")
    add_setting(labels, IngestSettings, "labeler", "--from")
    add_setting(labels, IngestSettings, "labels_status_port", "--status-port")
    for name in ("labeler_did", "label_values", "origin", "data_dir"):
        add_setting(labels, IngestSettings, name)
    labels.set_defaults(func=_ingest_labels)

    backfill = cmds.add_parser(
        "backfill", help="store every blob of a PDS or of some accounts",
        description="Store every blob a PDS (listRepos) or the given accounts hold "
                    "(listBlobs); resumable, idempotent. Prints a JSON summary.")
    target = backfill.add_mutually_exclusive_group(required=True)
    target.add_argument("--pds", help=plain("PDS base URL: every account it lists"))
    target.add_argument("--did", nargs="+", help=plain("these accounts (PDS from their DID)"))
    backfill.add_argument("--page-size", type=int, default=1000,
                          help=plain("listRepos/listBlobs page size", 1000))
    for name in polite:
        add_setting(backfill, IngestSettings, name)
    backfill.set_defaults(func=_ingest_backfill)

    status = cmds.add_parser("status", help="print the saved cursor and state (and a running "
                             "follower's health with --url); exit 1 if unhealthy")
    add_setting(status, IngestSettings, "data_dir")
    status.add_argument("--url", help=plain("a running follower's status URL, e.g. "
                                            "http://127.0.0.1:8300"))
    status.set_defaults(func=_ingest_status)


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    from atcdn.core.settings import LogSettings

    add_setting(parser, LogSettings, "format", "--log-format")
    add_setting(parser, LogSettings, "level", "--log-level")


def build_parser() -> argparse.ArgumentParser:
    from atcdn.core.settings import (
        EdgeSettings,
        OriginSettings,
        PushSettings,
        UpSettings,
    )

    parser = argparse.ArgumentParser(
        prog="atcdn", description="atcdn: a media CDN for the AT Protocol (origin, edge "
        "caches, control plane).",
        epilog="Every flag of a server is also an ATCDN_* environment variable, named in "
               "its help; docs/configuration.md lists them all.")
    roles = parser.add_subparsers(dest="role", required=True, metavar="COMMAND")

    origin = roles.add_parser("origin", help="the content-addressed blob store")
    origin_cmds = origin.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = origin_cmds.add_parser("serve", help="run the origin HTTP API",
                                   description="Run the origin HTTP API.")
    for name in ("host", "port", "data_dir", "store", "pds_blobstore", "max_blob_bytes", "workers",
                 "server", "pds_pull", "plc_url"):
        add_setting(serve, OriginSettings, name)
    _add_log_flags(serve)
    serve.set_defaults(func=_origin_serve)

    edge = roles.add_parser("edge", help="an edge cache node")
    edge_cmds = edge.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = edge_cmds.add_parser("serve", help="run the edge HTTP server",
                                 description="Run the edge HTTP server.")
    for name in ("host", "port", "origin", "cache_dir", "cache_size", "memory_cache_size",
                 "pds_fallback", "plc_url", "workers", "server"):
        add_setting(serve, EdgeSettings, name, repeat=name == "origin")
    _add_log_flags(serve)
    serve.set_defaults(func=_edge_serve)

    up_cmd = roles.add_parser("up", help="run the whole CDN on localhost with embedded defaults",
                              description="Run an origin and an edge on 127.0.0.1 with a "
                                          "private write token and a sample image.")
    for name in ("data_dir", "origin_port", "edge_port"):
        add_setting(up_cmd, UpSettings, name)
    _add_log_flags(up_cmd)
    up_cmd.set_defaults(func=_up)

    cid = roles.add_parser("cid", help="print the blob CID of files (or of stdin with -)",
                           description="Print the blob CID (CIDv1, raw, sha2-256) of each "
                                       "file, one a line.")
    cid.add_argument("files", nargs="+", metavar="FILE", help="a file, or - for stdin")
    cid.set_defaults(func=_cid)

    push_cmd = roles.add_parser(
        "push", help="store files and directories in an origin, with progress",
        description="Store files (directories recursively) in an origin under their CID. "
                    "Prints 'CID SIZE PATH' per stored file. The write token is "
                    "ATCDN_ORIGIN_TOKEN, or the file named by --token-file.")
    push_cmd.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    for name in ("origin", "did", "token_file", "concurrency"):
        add_setting(push_cmd, PushSettings, name)
    push_cmd.set_defaults(func=_push)

    status = roles.add_parser("status", help="one screen of every node's numbers and problems"
                              " (exit status 1 when any node is unhealthy)")
    status.add_argument("urls", nargs="+", metavar="URL", help="base URL of an origin or edge")
    status.set_defaults(func=_status)

    report = roles.add_parser("report", help="what the traffic served cost on this deployment"
                              " and what it would have cost from AWS")
    report.add_argument("--node", action="append", default=[], metavar="URL",
                        help=plain("a node to read counters from (repeat; counts since it "
                                   "started)", "none"))
    report.add_argument("--prometheus", metavar="URL",
                        help=plain("read traffic from this Prometheus instead (needs --period)"))
    report.add_argument("--period", help=plain("e.g. 30d, 12h", "with --node: since the "
                                               "nodes started"))
    report.add_argument("--prices", type=Path, metavar="FILE",
                        help=plain("price table", "the built-in dated table, cli/prices.toml"))
    report.add_argument("--json", action="store_true",
                        help=plain("print JSON instead of text", "text"))
    report.set_defaults(func=_report)

    _add_control(roles)
    _add_ingest(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
