"""The /watch routes: HLS playlists, segments, thumbnail and status of a video blob.

``watch_routes(get_source, settings)`` returns Starlette routes; the edge app mounts them.
``get_source(did, cid)`` must return the path of the *verified* source blob on disk (the
edge's fetch + cache layer). The first request for a video starts its transcode (see
edge/transcodes.py); playlists and files are served from disk as they appear.

Caching: segments, init sections and the thumbnail never change once written (the
transcode is deterministic per CID) and are immutable; playlists are immutable once the
transcode is done, and cached for 1 s while they still grow.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from atcdn.core.files import write_atomic
from atcdn.core.settings import EdgeSettings
from atcdn.edge import hls, urls
from atcdn.edge.transcode_files import META_NAME, THUMBNAIL_NAME
from atcdn.edge.transcodes import Busy, Transcodes
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

GetSource = Callable[[str, str], Awaitable[Path]]

IMMUTABLE = "public, max-age=31536000, immutable"
GROWING = "public, max-age=1"
RENDITION = re.compile(r"^[1-9][0-9]{0,3}p$")
FILE = re.compile(r"^(index\.m3u8|init\.mp4|seg[0-9]{5}\.m4s)$")
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".jpg": "image/jpeg",
}
WAIT_SECONDS = 30.0  # how long a request waits for a file the transcode has not written yet
POLL_SECONDS = 0.05


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None
          ) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


class Watch:
    """The handlers, sharing one Transcodes per worker process."""

    def __init__(self, get_source: GetSource, settings: EdgeSettings) -> None:
        self.get_source = get_source
        self.transcodes = Transcodes(settings)
        self.retry_after = settings.retry_after

    # ------------------------------------------------------------------ routes

    async def master(self, request: Request) -> Response:
        return await self._serve(request, hls.MASTER_PLAYLIST)

    async def thumbnail(self, request: Request) -> Response:
        return await self._serve(request, THUMBNAIL_NAME)

    async def rendition_file(self, request: Request) -> Response:
        rendition, name = request.path_params["rendition"], request.path_params["name"]
        if not RENDITION.match(rendition) or not FILE.match(name):
            return error(404, "NotFound", "no such rendition file")
        return await self._serve(request, f"{rendition}/{name}")

    async def status(self, request: Request) -> Response:
        ids = self._ids(request)
        if isinstance(ids, Response):
            return ids
        did, cid = ids
        t = self.transcodes
        state = t.state(cid)
        body: dict = {"state": state, "progress": 100 if state == "done" else 0}
        if state == "running":
            progress = t.progress(cid)
            body["progress"] = progress.get("progress", 0)
            body["encoded_seconds"] = progress.get("encoded_seconds", 0)
        elif state == "failed":
            body["error"] = t.error(cid)
        meta = t.folder(cid) / META_NAME
        if state in ("running", "done") and meta.exists():
            body["meta"] = _json(meta)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ serving

    def _ids(self, request: Request) -> tuple[str, str] | Response:
        try:
            return (urls.parse_did(request.path_params["did"]),
                    urls.parse_cid(request.path_params["cid"]))
        except urls.UrlError as exc:
            return error(400, "InvalidRequest", str(exc))

    async def _serve(self, request: Request, relative: str) -> Response:
        """Serve one file of the transcode, starting it and waiting for the file if needed."""
        ids = self._ids(request)
        if isinstance(ids, Response):
            return ids
        did, cid = ids
        t = self.transcodes
        path = t.folder(cid) / relative
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            state = t.state(cid)
            if state in ("done", "running") and path.exists():
                return self._file(request, cid, relative, path, done=state == "done")
            if state == "done":  # finished, and this file is not part of it
                return error(404, "NotFound", f"{relative} is not part of this video")
            if state == "failed":
                return _refusal(t.error(cid) or {})
            if state == "absent":
                try:
                    await t.ensure(cid, lambda: self.get_source(did, cid))
                except Busy as exc:
                    return error(429, "Overloaded", str(exc),
                                 {"Retry-After": str(exc.retry_after)})
                except Exception as exc:  # the source could not be fetched
                    return _source_error(exc, self.retry_after)
            if time.monotonic() > deadline:
                return error(503, "NotReady", f"{relative} is not ready yet",
                             {"Retry-After": "2"})
            await asyncio.sleep(POLL_SECONDS)

    def _file(self, request: Request, cid: str, relative: str, path: Path, done: bool
              ) -> Response:
        final = done or not relative.endswith(".m3u8")
        if final:
            etag = f'"{cid}/{relative}"'
            cache = IMMUTABLE
        else:
            stat = path.stat()
            etag = f'"{cid}/{relative}/{stat.st_size}-{stat.st_mtime_ns}"'
            cache = GROWING
        headers = {"Cache-Control": cache, "ETag": etag, "Access-Control-Allow-Origin": "*"}
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _refusal(stored: dict) -> Response:
    status = int(stored.get("status", 422))
    headers = {"Retry-After": "300"} if stored.get("transient") else None
    return error(status, stored.get("error", "UndecodableMedia"),
                 stored.get("message", "this video cannot be transcoded"), headers)


def _source_error(exc: Exception, retry_after: int) -> Response:
    """A failure of get_source, as the JSON error it carries (HTTPException, or any
    exception with ``status``, ``error`` and ``message`` like the edge's fetch errors);
    upstream trouble (502/503/504) says when to retry, as on /img and /blob."""
    retry = {"Retry-After": str(retry_after)}
    if isinstance(exc, HTTPException):
        return error(exc.status_code, "SourceError", str(exc.detail), dict(exc.headers or {}))
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return error(status, getattr(exc, "error", "SourceError"),
                     getattr(exc, "message", str(exc)),
                     retry if status in (502, 503, 504) else None)
    if isinstance(exc, FileNotFoundError):
        return error(404, "NotFound", "no such blob")
    return error(502, "UpstreamError", f"the video could not be fetched: {exc}", retry)


def source_from_bytes(get_bytes: Callable[[str, str], Awaitable[bytes]],
                      settings: EdgeSettings) -> GetSource:
    """Adapt a fetcher that returns verified blob *bytes* into a GetSource: the bytes are
    kept once under ``{cache_dir}/video/sources/{cid}`` for the transcoder to read."""
    folder = Path(settings.cache_dir) / "video" / "sources"

    async def get_source(did: str, cid: str) -> Path:
        path = folder / cid
        if not path.exists():
            data = await get_bytes(did, cid)
            folder.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomic, path, data)
        return path

    return get_source


def watch_routes(get_source: GetSource, settings: EdgeSettings) -> list[Route]:
    """The /watch routes, mounted by the edge app (edge/app.py)."""
    watch = Watch(get_source, settings)
    base = "/watch/{did}/{cid}"
    return [
        Route(f"{base}/{hls.MASTER_PLAYLIST}", watch.master, methods=["GET", "HEAD"]),
        Route(f"{base}/thumbnail.jpg", watch.thumbnail, methods=["GET", "HEAD"]),
        Route(f"{base}/status", watch.status, methods=["GET", "HEAD"]),
        Route(f"{base}/{{rendition}}/{{name}}", watch.rendition_file, methods=["GET", "HEAD"]),
    ]
