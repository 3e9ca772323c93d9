"""Sending cached entries over raw ASGI (errors: atcdn.core.errors.error_response).

Immutable content makes the HTTP rules short (core/ranges.py): a strong ETag per
(cid, preset, format), ``If-None-Match`` -> 304, one ``Range`` -> 206, an unsatisfiable
one -> 416, HEAD -> headers only, and always a Content-Length. Files go out through Starlette's FileResponse, which
uses granian's zero-copy ``http.response.pathsend`` when the server offers it.
"""

from __future__ import annotations

import os

from atcdn.core.errors import AtcdnError, error_response
from atcdn.core.ranges import RangeNotSatisfiable, etag_matches, parse_range
from atcdn.edge.cache import CACHE_CONTROL, Entry, Headers
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

VARY_ACCEPT = (b"vary", b"Accept")
UPSTREAM_STATUSES = (502, 503, 504)
# /blob types sent inline: the image and video types Bluesky posts carry, which browsers
# render with well-exercised decoders. Anything else (BMP, TIFF, PDF with its viewer and
# scripts, audio, Matroska, unknown) goes out as an octet-stream attachment.
INLINE_TYPES = frozenset({
    "image/jpeg", "image/png", "image/gif", "image/webp", "image/avif", "image/heic",
    "image/heif", "video/mp4", "video/quicktime", "video/webm",
})
BLOB_HEADERS: Headers = [
    (b"content-security-policy", b"default-src 'none'; sandbox"),
]


def blob_type(content_type: str | None) -> tuple[str, Headers]:
    """A safe Content-Type for raw blob bytes (as ``origin.mime.sniff`` names them) and
    its extra headers: anything not a known media type (HTML, SVG, XML, unknown) is an
    octet-stream attachment. An allowlist, so a new active type can never slip through."""
    if content_type in INLINE_TYPES:
        return content_type, BLOB_HEADERS
    return "application/octet-stream", [*BLOB_HEADERS, (b"content-disposition", b"attachment")]


async def send_entry(scope: Scope, receive: Receive, send: Send, entry: Entry,
                     request: dict[bytes, bytes], *, vary: bool = False) -> None:
    """Answer with ``entry`` honouring HEAD, If-None-Match and Range."""
    head_only = scope["method"] == "HEAD"
    headers = entry.headers + [VARY_ACCEPT] if vary else entry.headers
    inm = request.get(b"if-none-match")
    if inm is not None and etag_matches(inm.decode("latin-1"), entry.etag.decode()):
        not_modified = [(b"etag", entry.etag), CACHE_CONTROL]
        if vary:
            not_modified.append(VARY_ACCEPT)
        await send({"type": "http.response.start", "status": 304, "headers": not_modified})
        await send({"type": "http.response.body", "body": b""})
        return
    raw_range = request.get(b"range")
    if_range = request.get(b"if-range")
    if raw_range and if_range is not None and if_range.strip() != entry.etag:
        raw_range = None  # a range of some other version: send this one whole
    try:
        span = parse_range(raw_range.decode("latin-1"), entry.size) if raw_range else None
    except RangeNotSatisfiable:
        refusal = AtcdnError(416, "RangeNotSatisfiable", f"the entity is {entry.size} bytes",
                             headers={"Content-Range": f"bytes */{entry.size}"})
        await error_response(refusal)(scope, receive, send)
        return
    if entry.path is not None:
        response = FileResponse(entry.path, headers=_as_dict(headers),
                                stat_result=os.stat(entry.path))
        if span is None and b"range" in request:  # ignored range: whole body, as in memory
            scope = {**scope, "headers": [h for h in scope["headers"] if h[0] != b"range"]}
        await response(scope, receive, send)
        return
    body = entry.body or b""
    if span is None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head_only else body})
        return
    start, end = span
    partial = [h for h in headers if h[0] != b"content-length"] + [
        (b"content-length", str(end - start).encode()),
        (b"content-range", f"bytes {start}-{end - 1}/{entry.size}".encode()),
    ]
    await send({"type": "http.response.start", "status": 206, "headers": partial})
    await send({"type": "http.response.body", "body": b"" if head_only else body[start:end]})


def _as_dict(headers: Headers) -> dict[str, str]:
    return {k.decode(): v.decode("latin-1") for k, v in headers}
