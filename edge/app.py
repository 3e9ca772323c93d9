"""The edge server's app factory: builds every part of a worker and wires them together.

The parts, in the order a request meets them (Varnish's shape):

- ``front.Front``: ASGI dispatch, the takedown gate (``gate.Gate``) and memory hits;
- ``renditions.Renditions``: the miss path (disk tier, else transform);
- ``sources.Sources``: source blobs (disk tier, else ``fetch.Fetcher``: the CID's home
  origin (``origins.Origins``), else PDS; always verified), for ``/blob``, ``/img`` and
  ``/watch`` alike;
- ``watch``/``transcodes``: the HLS routes and their transcodes;
- ``admin.Admin``: metrics, purge and takedown routes, and the takedown feed;
  ``health``: liveness and readiness (each origin's state);
- ``core.accesslog.AccessLog`` around it all: request IDs and access lines.

``create_app`` is the one place the settings are read from ``ATCDN_*`` (when not given);
everything else receives what it needs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from atcdn.core.accesslog import AccessLog
from atcdn.core.errors import error_handlers
from atcdn.core.gauges import Gauges
from atcdn.core.quotas import Quotas
from atcdn.core import sandbox
from atcdn.core.settings import ControlSettings, EdgeSettings, LogSettings
from atcdn.core.status_route import StatusPage
from atcdn.edge.admin import Admin
from atcdn.edge.cache import DiskTier, MemoryTier
from atcdn.edge.fetch import Fetcher
from atcdn.core.flight import SingleFlight
from atcdn.edge.front import Front
from atcdn.edge.gate import Gate, Purges
from atcdn.edge.health import health_routes
from atcdn.edge.metrics import Metrics, use_dir
from atcdn.edge.misses import Misses
from atcdn.edge.presets import load_presets
from atcdn.edge.renditions import Renditions
from atcdn.edge.shares import Shares
from atcdn.edge.sources import Sources
from atcdn.edge.takedown import Node, Takedowns, follow_feed
from atcdn.edge.transcodes import Transcodes
from atcdn.edge.transform import Transformer
from atcdn.edge.video_space import split
from atcdn.edge.watch import watch_routes
from starlette.applications import Starlette


def create_app(settings: EdgeSettings | None = None, control: ControlSettings | None = None,
               logs: LogSettings | None = None) -> AccessLog:
    """The app factory servers call in every worker process."""
    settings = settings or EdgeSettings()
    control = control or ControlSettings()
    logs = logs or LogSettings()
    node = Node(settings.cache_dir)
    use_dir(node.metrics_dir)  # before prometheus_client loads (edge/metrics.py)
    metrics = Metrics()
    # The disk tier and the videos share cache_size (edge/video_space.py).
    disk_budget, _ = split(settings.cache_size, settings.video_share)
    disk = DiskTier(node.disk_dir, disk_budget, settings.memory_max_item)
    memory = MemoryTier(settings.memory_cache_size, touch=disk.touch,
                        observe=lambda used, entries: (metrics.memory_bytes.set(used),
                                                       metrics.memory_entries.set(entries)))
    takedowns = Takedowns(node.takedown_dir)
    purges = Purges(node.purge_dir)
    gate = Gate(takedowns, node.generation, memory, purges)
    # No wait for the same work lasts longer than the work itself may.
    flight = SingleFlight(node.lock_dir, deadline=2 * settings.fetch_timeout + 60)
    shares = Shares(settings.cache_dir / "shares.sqlite",
                    Quotas(settings.quota_did, settings.quota_pds, settings.quota_window),
                    int(settings.share_did * disk.budget), int(settings.share_pds * disk.budget),
                    evict=disk.evict_cid, cached=disk.has_cid)
    fetcher = Fetcher(settings, metrics, node.tmp_dir, shares)
    transformer = Transformer.from_settings(settings)
    for missing in sandbox.probe(settings.decoder_user):  # once per server process
        logging.getLogger("atcdn.edge").warning("decoders run without isolation: %s", missing)
    sources = Sources(disk, fetcher, flight, gate, node.video_dir, shares)
    renditions = Renditions(settings, disk, memory, sources, transformer, flight, gate, metrics,
                            shares)
    transcodes = Transcodes(settings, purges, owner=shares.owner)
    admin = Admin(settings, node, disk, takedowns, purges, metrics)
    misses = Misses(settings.max_pending_misses)  # /img, /blob and /watch's source fetches

    origins = fetcher.origins
    status = StatusPage("edge", settings.cache_dir,
                        lambda: metrics.render(Gauges(disk.readings)),
                        settings.model_dump(), origins.problems, settings.status_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        followers = follow_feed(admin.apply, settings, control)
        recording = status.start()
        checks = origins.start()
        yield
        recording.cancel()
        if checks is not None:
            checks.cancel()
        for follower in followers:
            follower.stop()
        await transcodes.close()
        await fetcher.aclose()
        transformer.close()
        metrics.flush()

    router = Starlette(routes=[*health_routes(origins, settings.retry_after), *admin.routes(),
                               status.route(),
                               *watch_routes(misses.bounded(sources.file), transcodes)],
                       exception_handlers=error_handlers(retry_after=settings.retry_after),
                       lifespan=lifespan)
    front = Front(settings, load_presets(settings.presets), gate, memory, renditions, metrics,
                  router, misses)
    # Outermost: request IDs and one access line per request; memory hits go straight
    # from the front's hit path to the client.
    return AccessLog(front, logs, hits=front.hit)
