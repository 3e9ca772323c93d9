"""The edge's front: ASGI dispatch, the takedown gate and the hit path.

The story of a content request: parse the URL -> the gate refuses taken-down items (451)
-> memory hit? send it. Otherwise the miss path (edge/renditions.py) makes the entry,
bounded in number per worker (429 beyond; edge/misses.py, shared with /watch's source
fetches). Only ``/img`` and ``/blob`` bypass
Starlette's router, so a memory hit costs one dict lookup and two ``send`` calls;
``/watch`` passes the same gate, then the router (edge/watch.py), as do the admin routes
(edge/admin.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

from atcdn.core.accesslog import note
from atcdn.core.errors import (
    AtcdnError,
    error_response,
    from_unexpected,
    invalid,
    taken_down,
)
from atcdn.core.ranges import RangeNotSatisfiable
from atcdn.core.settings import EdgeSettings
from atcdn.edge import urls
from atcdn.edge.cache import Entry, MemoryTier
from atcdn.edge.gate import Gate
from atcdn.edge.metrics import Metrics
from atcdn.edge.misses import Misses
from atcdn.edge.presets import Preset
from atcdn.edge.renditions import Renditions
from atcdn.edge.responses import Answer, answer, send_entry
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("atcdn.edge")
PARSED_PATHS = 4096  # per worker: the paths of the hottest entries, parsed once
NOT_ALLOWED = AtcdnError(405, "MethodNotAllowed", "GET or HEAD only")
Work = Callable[[], Awaitable[tuple[Entry, str]]]


class Front:
    """The ASGI application of one edge worker process."""

    def __init__(self, settings: EdgeSettings, presets: dict[str, Preset], gate: Gate,
                 memory: MemoryTier, renditions: Renditions, metrics: Metrics,
                 router: ASGIApp, misses: Misses) -> None:
        self.settings = settings
        self.presets = presets
        self.gate = gate
        self.memory = memory
        self.renditions = renditions
        self.metrics = metrics
        self.router = router
        self.misses = misses  # the bound on misses in progress, shared with /watch
        # Parsing a path (DID pattern, CID check, a frozen dataclass) was a tenth of a
        # memory hit; hits repeat their paths. Parsers are pure; errors are not cached.
        self.parse_image = functools.lru_cache(maxsize=PARSED_PATHS)(functools.partial(
            urls.parse_image_path, presets=presets, avif=settings.enable_avif))
        self.parse_blob = functools.lru_cache(maxsize=PARSED_PATHS)(urls.parse_blob_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/img/"):
                return await self.image(scope, receive, send)
            if path.startswith("/blob/"):
                return await self.blob(scope, receive, send)
            if path.startswith("/watch/") and await self.watch_refused(scope, receive, send):
                return
        await self.router(scope, receive, send)

    # -- content routes -------------------------------------------------------------------

    def hit(self, scope: Scope) -> Answer | None:
        """The hit path: a GET or HEAD of ``/img`` or ``/blob`` that passes the gate,
        answered whole from this worker's memory; else None, and the request takes
        ``__call__``. Synchronous and small: the access log (core/accesslog.py) sends the
        answer with the request ID and writes its line, with no wrapper around ``send``."""
        if scope["method"] not in ("GET", "HEAD"):
            return None
        path: str = scope["path"]
        request = dict(scope["headers"])
        req: urls.ImageRequest | urls.BlobRequest
        try:
            if path.startswith("/img/"):
                req, _, key = self.image_request(path, request)
                route, vary = "img", req.fmt is None
            elif path.startswith("/blob/"):
                req, key = self.blob_request(path)
                route, vary = "blob", False
            else:
                return None
        except urls.UrlError:
            return None
        if self.gate.refuses(req.did, req.cid):  # before memory: it may empty the tier
            return None
        entry = self.memory.get(key)
        if entry is None:
            return None
        try:
            ready = answer(entry, request, head_only=scope["method"] == "HEAD", vary=vary)
        except RangeNotSatisfiable:
            return None
        if ready is not None:
            self.metrics.memory_hit(route, entry.size)
        return ready

    def image_request(self, path: str, request: dict[bytes, bytes]
                      ) -> tuple[urls.ImageRequest, urls.Format, str]:
        """An ``/img`` path's request, its format (negotiated when the URL names none) and
        memory key; raises UrlError."""
        req = self.parse_image(path)
        fmt = req.fmt or urls.negotiate(request.get(b"accept", b"").decode("latin-1"),
                                        self.settings.enable_avif)
        return req, fmt, urls.image_key(req.cid, req.preset.name, fmt)

    def blob_request(self, path: str) -> tuple[urls.BlobRequest, str]:
        """A ``/blob`` path's request and memory key; raises UrlError."""
        req = self.parse_blob(path)
        return req, urls.source_key(req.cid)

    async def image(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            return await self.error(scope, receive, send, "img", NOT_ALLOWED)
        request = dict(scope["headers"])
        try:
            req, fmt, key = self.image_request(scope["path"], request)
        except urls.UrlError as exc:
            return await self.error(scope, receive, send, "img", invalid(str(exc)))
        if self.gate.refuses(req.did, req.cid):
            return await self.error(scope, receive, send, "img", taken_down(req.cid))
        entry = self.memory.get(key)
        if entry is not None:
            self.metrics.memory_hit("img", entry.size)
            note(cache="memory")
            return await send_entry(scope, receive, send, entry, request, vary=req.fmt is None)
        await self.miss(scope, receive, send, "img", (key, req.did),
                        lambda: self.renditions.image(req, fmt, key), vary=req.fmt is None)

    async def blob(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            return await self.error(scope, receive, send, "blob", NOT_ALLOWED)
        try:
            req, key = self.blob_request(scope["path"])
        except urls.UrlError as exc:
            return await self.error(scope, receive, send, "blob", invalid(str(exc)))
        if self.gate.refuses(req.did, req.cid):
            return await self.error(scope, receive, send, "blob", taken_down(req.cid))
        entry = self.memory.get(key)
        if entry is not None:
            self.metrics.memory_hit("blob", entry.size)
            note(cache="memory")
            return await send_entry(scope, receive, send, entry, dict(scope["headers"]))
        await self.miss(scope, receive, send, "blob", (key, req.did),
                        lambda: self.renditions.blob(req, key))

    async def watch_refused(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """The gate for ``/watch/{did}/{cid}/...``, before the video routes serve a
        finished transcode from disk; True when refused."""
        parts = scope["path"].split("/")
        if len(parts) < 4:
            return False
        try:
            did, cid = urls.parse_did(parts[2]), urls.parse_cid(parts[3])
        except urls.UrlError:
            return False  # the video routes answer the 400
        if not self.gate.refuses(did, cid):
            return False
        await self.error(scope, receive, send, "watch", taken_down(cid))
        return True

    # -- misses and errors ----------------------------------------------------------------

    async def miss(self, scope: Scope, receive: Receive, send: Send, route: str,
                   miss: tuple[str, str], work: Work, *, vary: bool = False) -> None:
        """Run a memory miss and send its entry; every failure is answered as JSON.

        Misses in progress are bounded per worker (429 beyond), but a request joining an
        identical miss is not counted (edge/misses.py; bench/edge.py sends 2,000 at once)."""
        started = time.monotonic()
        try:
            with self.misses.admit(miss):
                entry, outcome = await work()
        except AtcdnError as exc:
            return await self.error(scope, receive, send, route, exc)
        except Exception as exc:
            log.exception("%s request failed", route)  # with method, path and request ID
            return await self.error(scope, receive, send, route, from_unexpected(exc))
        self._served(route, outcome, entry, started)
        await send_entry(scope, receive, send, entry, dict(scope["headers"]), vary=vary)

    def _served(self, route: str, outcome: str, entry: Entry, started: float) -> None:
        note(cache=outcome)
        if outcome == "disk":
            self.metrics.cache_hits.labels(route, "disk").inc()
        else:
            self.metrics.cache_misses.labels(route).inc()
            self.metrics.miss_bytes.labels(route).inc(entry.size)
        self.metrics.bytes_served.labels(route).inc(entry.size)
        self.metrics.request_seconds.labels(route, outcome).observe(time.monotonic() - started)

    async def error(self, scope: Scope, receive: Receive, send: Send, route: str,
                    exc: AtcdnError) -> None:
        self.metrics.errors.labels(route, str(exc.status)).inc()
        await error_response(exc, retry_after=self.settings.retry_after)(scope, receive, send)
