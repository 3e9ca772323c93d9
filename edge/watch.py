"""The /watch routes: HLS playlists, segments, thumbnail and status of a video blob.

``watch_routes(get_source, transcodes)`` returns Starlette routes; the edge app mounts
them behind the front's takedown gate. ``get_source(did, cid)`` must return the path of
the *verified* source blob on disk (edge/sources.py). The first request for a video
starts its transcode (see edge/transcodes.py); playlists and files are served from disk
as they appear. Handlers raise ``AtcdnError``s; the router answers them.

Caching: segments, init sections and the thumbnail never change once written (the
transcode is deterministic per CID) and are immutable; playlists are immutable once the
transcode is done, and cached for 1 s while they still grow.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from atcdn.core.errors import AtcdnError, invalid
from atcdn.core.file_response import FileResponse
from atcdn.core.ranges import IMMUTABLE, etag_matches
from atcdn.edge import hls, urls
from atcdn.edge.transcode_files import META_NAME, THUMBNAIL_NAME
from atcdn.edge.transcodes import Transcodes
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

GetSource = Callable[[str, str], Awaitable[Path]]

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


class Watch:
    """The handlers, sharing one Transcodes per worker process."""

    def __init__(self, get_source: GetSource, transcodes: Transcodes) -> None:
        self.get_source = get_source
        self.transcodes = transcodes

    # ------------------------------------------------------------------ routes

    async def master(self, request: Request) -> Response:
        return await self._serve(request, hls.MASTER_PLAYLIST)

    async def thumbnail(self, request: Request) -> Response:
        return await self._serve(request, THUMBNAIL_NAME)

    async def rendition_file(self, request: Request) -> Response:
        rendition, name = request.path_params["rendition"], request.path_params["name"]
        if not RENDITION.match(rendition) or not FILE.match(name):
            raise AtcdnError(404, "NotFound", "no such rendition file")
        return await self._serve(request, f"{rendition}/{name}")

    async def status(self, request: Request) -> Response:
        did, cid = self._ids(request)
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

    def _ids(self, request: Request) -> tuple[str, str]:
        try:
            return (urls.parse_did(request.path_params["did"]),
                    urls.parse_cid(request.path_params["cid"]))
        except urls.UrlError as exc:
            raise invalid(str(exc)) from None

    async def _serve(self, request: Request, relative: str) -> Response:
        """Serve one file of the transcode, starting it and waiting for the file if needed."""
        did, cid = self._ids(request)
        t = self.transcodes
        path = t.folder(cid) / relative
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            state = t.state(cid)
            stat = _stat(path) if state in ("done", "running") else None
            if stat is not None:
                return self._file(request, cid, relative, path, stat, done=state == "done")
            if state == "done":  # finished, and this file is not part of it
                raise AtcdnError(404, "NotFound", f"{relative} is not part of this video")
            if state == "failed":
                raise _refusal(t.error(cid) or {})
            if state == "absent":
                # AtcdnError 429 when the queue is full, or the source's own failure.
                await t.ensure(cid, lambda: self.get_source(did, cid))
            if time.monotonic() > deadline:
                raise AtcdnError(503, "NotReady", f"{relative} is not ready yet", retry_after=2)
            await asyncio.sleep(POLL_SECONDS)

    def _file(self, request: Request, cid: str, relative: str, path: Path,
              stat: os.stat_result, done: bool) -> Response:
        final = done or not relative.endswith(".m3u8")
        if final:
            etag = f'"{cid}/{relative}"'
            cache = IMMUTABLE
        else:
            etag = f'"{cid}/{relative}/{stat.st_size}-{stat.st_mtime_ns}"'
            cache = GROWING
        headers = {"Cache-Control": cache, "ETag": etag, "Access-Control-Allow-Origin": "*"}
        self.transcodes.space.touch(cid)  # least recently used videos are removed first
        if etag_matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=headers)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _refusal(stored: dict) -> AtcdnError:
    """A stored refusal of the transcode (error.json); transient ones say when to retry."""
    refusal = AtcdnError.from_json({"status": 422, "error": "UndecodableMedia",
                                    "message": "this video cannot be transcoded", **stored})
    if stored.get("transient"):
        refusal.headers["Retry-After"] = "300"
    return refusal


def watch_routes(get_source: GetSource, transcodes: Transcodes) -> list[Route]:
    """The /watch routes, mounted by the edge app (edge/app.py)."""
    watch = Watch(get_source, transcodes)
    base = "/watch/{did}/{cid}"
    return [
        Route(f"{base}/{hls.MASTER_PLAYLIST}", watch.master, methods=["GET", "HEAD"]),
        Route(f"{base}/thumbnail.jpg", watch.thumbnail, methods=["GET", "HEAD"]),
        Route(f"{base}/status", watch.status, methods=["GET", "HEAD"]),
        Route(f"{base}/{{rendition}}/{{name}}", watch.rendition_file, methods=["GET", "HEAD"]),
    ]
