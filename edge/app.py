"""The edge HTTP server: ``/img/...`` and ``/blob/...`` in front, the rest on Starlette.

The story of an image request: parse the URL -> pick the format -> refuse taken-down
items (451) -> memory hit? send it. Otherwise, under node-wide single-flight: disk hit?
else get the verified source (disk, else origin, else PDS) -> transform -> store on
disk -> send. Only the two content routes bypass Starlette's router, so a memory hit
costs one dict lookup and two ``send`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from atcdn.core.accesslog import AccessLog, note
from atcdn.core.errors import EdgeError
from atcdn.core.feed import Event as FeedEvent
from atcdn.core.feed import start_follower
from atcdn.core.files import write_atomic
from atcdn.core.mime import SNIFF_BYTES, sniff
from atcdn.core.settings import EdgeSettings
from atcdn.edge import urls
from atcdn.edge.cache import DiskTier, Entry, MemoryTier, make_entry
from atcdn.edge.fetch import Fetcher
from atcdn.edge.flight import SingleFlight
from atcdn.edge.health import OriginProbe, health_routes
from atcdn.edge.metrics import Metrics, use_dir
from atcdn.edge.presets import CONTENT_TYPES, Format, load_presets
from atcdn.edge.responses import blob_type, send_entry, send_error
from atcdn.edge.takedown import SETTLE, Node, Takedowns, purge_disk, takedown
from atcdn.edge.transform import MediaError, transform
from atcdn.edge.transform import shutdown as stop_transforms
from atcdn.edge.watch import watch_routes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("atcdn.edge")
Value = bytes | str  # a disk-tier value: small bytes, or the path of a file


class Edge:
    """The ASGI application of one edge worker process."""

    def __init__(self, settings: EdgeSettings) -> None:
        node = Node(settings.cache_dir)
        use_dir(node.metrics_dir)
        self.node = node
        self.settings = settings
        self.presets = load_presets(settings.presets)
        self.metrics = Metrics()
        self.disk = DiskTier(node.disk_dir, settings.cache_size, settings.memory_max_item)
        self.memory = MemoryTier(settings.memory_cache_size, touch=self.disk.touch)
        self.takedowns = Takedowns(node.takedown_dir)
        self.generation = node.generation
        self.flight = SingleFlight(node.lock_dir, wait=2 * settings.fetch_timeout + 60)
        self.fetcher = Fetcher(settings, self.metrics, node.tmp_dir)
        self.pending = 0  # memory misses in progress in this worker
        self.router = Starlette(
            routes=[
                *health_routes(OriginProbe(self.fetcher.origin, settings.health_probe_interval),
                               settings.retry_after),
                Route("/metrics", self.metrics_page, methods=["GET"]),
                Route("/admin/purge", self.admin_purge, methods=["POST"]),
                Route("/admin/takedown", self.admin_takedown, methods=["POST"]),
                *watch_routes(self._video_source, settings),
            ],
            exception_handlers={404: _json_http_error, 405: _json_http_error},
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        follower = start_follower(self._apply_takedown,
                                  self.settings.cache_dir / "takedown-position")
        yield
        if follower is not None:
            follower.stop()
        await self.fetcher.aclose()
        stop_transforms()
        self.metrics.flush()

    def _apply_takedown(self, event: FeedEvent) -> None:
        """A takedown-feed event: block (451) and purge every tier, or restore."""
        takedown(cid=event.cid, did=event.did, restore=event.action == "restore",
                 settings=self.settings)

    def mount(self, path: str, app: ASGIApp) -> None:
        """Add another route table (e.g. video's ``/watch``) behind the content routes."""
        self.router.mount(path, app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/img/"):
                return await self.image(scope, receive, send)
            if path.startswith("/blob/"):
                return await self.blob(scope, receive, send)
            if path.startswith("/watch/") and await self._watch_blocked(path, send):
                return
        await self.router(scope, receive, send)

    # -- content routes -------------------------------------------------------------------

    async def image(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            return await send_error(send, 405, "MethodNotAllowed", "GET or HEAD only")
        self._sync()
        request = dict(scope["headers"])
        try:
            req = urls.parse_image_path(scope["path"], self.presets, avif=self.settings.enable_avif)
        except urls.UrlError as exc:
            return await self._error(send, "img", EdgeError(400, "InvalidRequest", str(exc)))
        fmt = req.fmt or urls.negotiate(request.get(b"accept", b"").decode("latin-1"),
                                        self.settings.enable_avif)
        if self.takedowns.blocked(req.did, req.cid):
            return await self._error(send, "img", _taken_down(req.cid))
        key = urls.image_key(req.cid, req.preset.name, fmt)
        entry = self.memory.get(key)
        if entry is not None:
            self.metrics.memory_hit("img", entry.size)
            note(cache="memory")
            return await send_entry(scope, receive, send, entry, request, vary=req.fmt is None)
        started = time.monotonic()
        found = await self._miss(send, "img", key, lambda: self._image_entry(req, fmt, key))
        if found is not None:
            self._served("img", found[1], found[0], started)
            await send_entry(scope, receive, send, found[0], request, vary=req.fmt is None)

    async def blob(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            return await send_error(send, 405, "MethodNotAllowed", "GET or HEAD only")
        self._sync()
        request = dict(scope["headers"])
        try:
            req = urls.parse_blob_path(scope["path"])
        except urls.UrlError as exc:
            return await self._error(send, "blob", EdgeError(400, "InvalidRequest", str(exc)))
        if self.takedowns.blocked(req.did, req.cid):
            return await self._error(send, "blob", _taken_down(req.cid))
        key = urls.source_key(req.cid)
        entry = self.memory.get(key)
        if entry is not None:
            self.metrics.memory_hit("blob", entry.size)
            note(cache="memory")
            return await send_entry(scope, receive, send, entry, request)
        started = time.monotonic()
        found = await self._miss(send, "blob", key, lambda: self._blob_entry(req, key))
        if found is not None:
            self._served("blob", found[1], found[0], started)
            await send_entry(scope, receive, send, found[0], request)

    async def _watch_blocked(self, path: str, send: Send) -> bool:
        """Refuse (451) a /watch path of a taken-down blob or account, before the video
        routes serve a finished transcode from disk; True when refused."""
        parts = path.split("/")
        if len(parts) < 4:
            return False
        self._sync()
        try:
            did, cid = urls.parse_did(parts[2]), urls.parse_cid(parts[3])
        except urls.UrlError:
            return False  # the video routes answer the 400
        if not self.takedowns.blocked(did, cid):
            return False
        await self._error(send, "watch", _taken_down(cid))
        return True

    async def _video_source(self, did: str, cid: str) -> Path:
        """The verified video blob as a file for the transcoder (fetched once per node)."""
        if self.takedowns.blocked(did, cid):
            raise _taken_down(cid)
        value, _ = await self._source(did, cid)
        if isinstance(value, str):
            return Path(value)
        path = self.node.video_dir / "sources" / cid  # small blobs live in the cache index
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomic, path, value)
        return path

    # -- the miss path --------------------------------------------------------------------

    async def _miss(self, send: Send, route: str, key: str,
                    work: Callable[[], Awaitable[tuple[Entry, str]]]) -> tuple[Entry, str] | None:
        """Run a memory miss: bounded in number per worker (429 beyond), and every
        failure answered as JSON. None when an error was sent.

        A request that joins a miss already running for its key costs one future, not
        a fetch or a transform, so it neither counts nor is refused: a herd of identical
        requests is one miss (bench/edge.py sends 2,000 at once)."""
        joining = self.flight.joins(key)
        if not joining and self.pending >= self.settings.max_pending_misses:
            await self._error(send, route, EdgeError(429, "Overloaded", "too busy; retry later"))
            return None
        self.pending += not joining
        try:
            return await work()
        except EdgeError as exc:  # MediaError included
            await self._error(send, route, exc)
        except Exception:
            log.exception("%s request failed: answered 500", route)  # + method, path, id
            await self._error(send, route, EdgeError(500, "InternalError", "unexpected; logged"))
        finally:
            self.pending -= not joining
        return None

    async def _blob_entry(self, req: urls.BlobRequest, key: str) -> tuple[Entry, str]:
        value, outcome = await self._source(req.did, req.cid)
        content_type, extra = blob_type(sniff(self.disk.head(value, SNIFF_BYTES)))
        return self._remember(key, value, urls.blob_etag(req.cid), content_type, extra), outcome

    async def _image_entry(self, req: urls.ImageRequest, fmt: Format,
                           key: str) -> tuple[Entry, str]:
        value = self.disk.get(key)
        if value is not None:
            return self._image_remember(req, fmt, key, value), "disk"
        return await self.flight.run(key, lambda: self._render(req, fmt, key)), "miss"

    async def _render(self, req: urls.ImageRequest, fmt: Format, key: str) -> Entry:
        value = self.disk.get(key)  # rendered by another process while we waited
        if value is None:
            source, _ = await self._source(req.did, req.cid)
            started = time.monotonic()
            try:
                rendered = await transform(self._source_bytes(source), req.preset, fmt, key=key)
            except MediaError as exc:
                self.metrics.transforms.labels(str(exc.status)).inc()
                raise
            self.metrics.transforms.labels("200").inc()
            self.metrics.transform_seconds.observe(time.monotonic() - started)
            self.disk.put_bytes(key, rendered.body, req.cid)
            value = self.disk.get(key) or rendered.body
        return self._image_remember(req, fmt, key, value)

    async def _source(self, did: str, cid: str) -> tuple[Value, str]:
        """The verified source blob from disk, else fetched (once per node)."""
        key = urls.source_key(cid)
        value = self.disk.get(key)
        if value is not None:
            return value, "disk"
        return await self.flight.run(key, lambda: self._fetch_source(did, cid, key)), "miss"

    async def _fetch_source(self, did: str, cid: str, key: str) -> Value:
        value = self.disk.get(key)
        if value is not None:
            return value
        fetched = await self.fetcher.fetch(did, cid)
        try:
            if self.takedowns.blocked(did, cid):  # taken down while we fetched
                raise _taken_down(cid)
            self.disk.put_file(key, fetched.path, cid)
            self.disk.remember_owner(did, cid)
        finally:
            fetched.path.unlink(missing_ok=True)
        value = self.disk.get(key)
        if value is None:
            raise EdgeError(507, "CacheFull", "the blob does not fit this edge's cache")
        return value

    def _source_bytes(self, value: Value) -> bytes:
        size = len(value) if isinstance(value, bytes) else os.path.getsize(value)
        limit = self.settings.image_max_source_bytes
        if size > limit:
            raise MediaError(413, "SourceTooLarge", f"source is {size} bytes, limit {limit}")
        if isinstance(value, bytes):
            return value
        with open(value, "rb") as fh:
            return fh.read()

    def _image_remember(self, req: urls.ImageRequest, fmt: Format, key: str, value: Value) -> Entry:
        return self._remember(key, value, urls.image_etag(req.cid, req.preset.name, fmt),
                              CONTENT_TYPES[fmt])

    def _remember(self, key: str, value: Value, etag: str, content_type: str,
                  extra: list[tuple[bytes, bytes]] = []) -> Entry:  # noqa: B006 (read only)
        if isinstance(value, bytes):
            entry = make_entry(etag, content_type, len(value), body=value, extra=extra)
        elif (size := os.path.getsize(value)) <= self.settings.memory_file_max:
            # A body from memory beats pathsend under granian: 5 MB hits 0.79x -> 1.00x
            # nginx MB/s (bench/edge.py). Read once per worker, then served from memory.
            with open(value, "rb") as fh:
                entry = make_entry(etag, content_type, size, body=fh.read(), extra=extra)
        else:
            entry = make_entry(etag, content_type, size, path=value, extra=extra)
        self.memory.put(key, entry)
        return entry

    def _sync(self) -> None:
        """Pick up takedowns and purges made by any process of this node."""
        if self.generation.changed():
            self.memory.clear()
            self.takedowns.load()

    def _served(self, route: str, outcome: str, entry: Entry, started: float) -> None:
        note(cache=outcome)
        if outcome == "disk":
            self.metrics.cache_hits.labels(route, "disk").inc()
        else:
            self.metrics.cache_misses.labels(route).inc()
        self.metrics.bytes_served.labels(route).inc(entry.size)
        self.metrics.request_seconds.labels(route, outcome).observe(time.monotonic() - started)

    async def _error(self, send: Send, route: str, exc: EdgeError) -> None:
        self.metrics.errors.labels(route, str(exc.status)).inc()
        await send_error(send, exc.status, exc.error, exc.message,
                         retry_after=self.settings.retry_after)

    # -- Starlette routes -----------------------------------------------------------------

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin_purge(self, request: Request) -> Response:
        """Body: ``{"paths": [...]}`` and/or ``{"did": ..., "cid": ...}``."""
        body = await self._admin_body(request)
        if isinstance(body, Response):
            return body
        targets: list[tuple[str | None, str | None]] = []
        try:
            for path in body.get("paths") or []:
                did, cid = urls.parse_purge_path(str(path))
                targets.append((None, cid) if cid else (did, None))
            if body.get("did") or body.get("cid"):
                targets.append(_did_cid(body))
        except urls.UrlError as exc:
            return _json_error(400, "InvalidRequest", str(exc))
        removed = sum(purge_disk(self.disk, self.node.video_dir, did=did, cid=cid)
                      for did, cid in targets)
        await self._settle()
        return JSONResponse({"purged": removed, "targets": len(targets)})

    async def admin_takedown(self, request: Request) -> Response:
        """Body: ``{"did": ..., "cid": ..., "restore": false}``; 451 from now on."""
        body = await self._admin_body(request)
        if isinstance(body, Response):
            return body
        try:
            did, cid = _did_cid(body)
        except urls.UrlError as exc:
            return _json_error(400, "InvalidRequest", str(exc))
        if not did and not cid:
            return _json_error(400, "InvalidRequest", "give a did, a cid or both")
        if body.get("restore"):
            self.takedowns.remove(did=did, cid=cid)
            removed = 0
        else:
            self.takedowns.add(did=did, cid=cid)
            removed = purge_disk(self.disk, self.node.video_dir, did=did, cid=cid)
        await self._settle()
        return JSONResponse({"purged": removed})

    async def _settle(self) -> None:
        """Tell every worker, and answer only once they all will have looked."""
        self.generation.bump()
        await asyncio.sleep(SETTLE)

    async def _admin_body(self, request: Request) -> dict[str, Any] | Response:
        token = self.settings.purge_token
        if not token:
            return _json_error(403, "Forbidden", "set ATCDN_EDGE_PURGE_TOKEN to enable")
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            return _json_error(401, "Unauthorized", "bad or missing bearer token")
        try:
            body = await request.json()
        except ValueError:
            return _json_error(400, "InvalidRequest", "body must be JSON")
        if not isinstance(body, dict):
            return _json_error(400, "InvalidRequest", "body must be a JSON object")
        return body


def _did_cid(body: dict[str, Any]) -> tuple[str | None, str | None]:
    did = urls.parse_did(str(body["did"])) if body.get("did") else None
    cid = urls.parse_cid(str(body["cid"])) if body.get("cid") else None
    return did, cid


def _taken_down(cid: str) -> EdgeError:
    return EdgeError(451, "TakenDown", f"{cid} is unavailable for legal reasons")


def _json_error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


async def _json_http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    return _json_error(status, names.get(status, "Error"), str(getattr(exc, "detail", exc)))


def create_app() -> ASGIApp:
    """The app factory servers call in every worker; settings come from ``ATCDN_*``."""
    return AccessLog(Edge(EdgeSettings()))
