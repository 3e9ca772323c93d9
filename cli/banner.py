"""What a server says once, at start: where it keeps things, who may write, what it
fetches from where, and its budgets. Pure: settings in, lines out (no secrets)."""

from __future__ import annotations

from atcdn.core.settings import EdgeSettings, LogSettings, OriginSettings
from atcdn.core.sizes import format_size


def _workers(server: str, workers: int) -> str:
    return f"{server}, {workers} worker{'s' if workers != 1 else ''}"


def _logs(logs: LogSettings) -> str:
    access = "access log on" if logs.access else "access log off (ATCDN_LOG_ACCESS)"
    return f"  logs: {logs.format} lines on stderr, level {logs.level}, {access}"


def origin_banner(settings: OriginSettings, logs: LogSettings) -> list[str]:
    if settings.store == "s3":
        where = (f"s3 bucket {settings.s3_bucket!r} (prefix {settings.s3_prefix!r}) at "
                 f"{settings.s3_endpoint or 'AWS ' + settings.s3_region}")
    else:
        where = f"fs in {settings.data_dir.resolve()}"
    writes = ("writes: token set (ATCDN_ORIGIN_TOKEN)" if settings.token else
              "writes: OFF - no ATCDN_ORIGIN_TOKEN, this origin is read-only")
    return [
        f"atcdn origin on http://{settings.host}:{settings.port} "
        f"({_workers(settings.server, settings.workers)})",
        f"  store: {where}",
        f"  data: {settings.data_dir.resolve()} (index, metrics, feed position)",
        f"  {writes}",
        f"  largest blob: {format_size(settings.max_blob_bytes)}",
        _logs(logs),
    ]


def fallback_line(settings: EdgeSettings) -> str:
    if not settings.pds_fallback:
        return "PDS fallback: off (ATCDN_PDS_FALLBACK=0): blobs the origin lacks answer 404"
    guard = ("private addresses allowed" if settings.allow_private_networks
             else "public addresses only")
    return (f"PDS fallback: on, blobs the origin lacks come from the account's PDS "
            f"(DIDs resolved at {settings.plc_url}; {guard})")


def origins_line(settings: EdgeSettings) -> str:
    if len(settings.origins) == 1:
        return f"  origin: {settings.origins[0]}"
    return (f"  origins: {', '.join(settings.origins)} (each CID has a home origin among them;"
            f" checked every {settings.origin_check_interval:g} s, down after"
            f" {settings.origin_down_after} failures)")


def edge_banner(settings: EdgeSettings, logs: LogSettings) -> list[str]:
    handoff = ("PDS-fetched blobs handed to the origin (ATCDN_EDGE_ORIGIN_TOKEN set)"
               if settings.origin_token else "PDS-fetched blobs kept here only "
               "(no ATCDN_EDGE_ORIGIN_TOKEN)")
    admin = ("admin purge/takedown: token set" if settings.purge_token else
             "admin purge/takedown: off (no ATCDN_EDGE_PURGE_TOKEN)")
    return [
        f"atcdn edge on http://{settings.host}:{settings.port} "
        f"({_workers(settings.server, settings.workers)})",
        origins_line(settings),
        f"  cache: {settings.cache_dir.resolve()}, disk budget "
        f"{format_size(settings.cache_size)}, memory {format_size(settings.memory_cache_size)}"
        " per worker",
        f"  {fallback_line(settings)}",
        f"  {handoff}",
        f"  {admin}",
        _logs(logs),
    ]
