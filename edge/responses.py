"""Sending cached entries over raw ASGI (errors: atcdn.core.errors.error_response).

Immutable content makes the HTTP rules short (core/ranges.py): a strong ETag per
(cid, preset, format), ``If-None-Match`` -> 304, one ``Range`` -> 206, an unsatisfiable
one -> 416, HEAD -> headers only, and always a Content-Length. Files go out through
core/file_response.py (zero-copy ``http.response.pathsend`` when the server offers it).
"""

from __future__ import annotations

import os

from atcdn.core.accesslog import Answer
from atcdn.core.errors import AtcdnError, error_response
from atcdn.core.file_response import FileResponse
from atcdn.core.ranges import RangeNotSatisfiable, etag_matches, parse_range
from atcdn.edge.cache import CACHE_CONTROL, Entry, Headers
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


def answer(entry: Entry, request: dict[bytes, bytes], *, head_only: bool,
           vary: bool = False) -> Answer | None:
    """The answer to a GET or HEAD of ``entry`` honouring If-None-Match and Range; None
    when it is not sent from memory (a file entry not matched by If-None-Match). Raises
    RangeNotSatisfiable. Pure: the hit path (edge/front.py ``Front.hit``) and
    ``send_entry`` both send what it answers."""
    headers = entry.headers + [VARY_ACCEPT] if vary else entry.headers
    inm = request.get(b"if-none-match")
    if inm is not None and etag_matches(inm.decode("latin-1"), entry.etag.decode()):
        not_modified = [(b"etag", entry.etag), CACHE_CONTROL]
        if vary:
            not_modified.append(VARY_ACCEPT)
        return Answer(304, not_modified, b"")
    if entry.path is not None:
        return None
    body = entry.body or b""
    span = _span(entry, request)
    if span is None:
        return Answer(200, headers, b"" if head_only else body)
    start, end = span
    partial = [h for h in headers if h[0] != b"content-length"] + [
        (b"content-length", str(end - start).encode()),
        (b"content-range", f"bytes {start}-{end - 1}/{entry.size}".encode()),
    ]
    return Answer(206, partial, b"" if head_only else body[start:end])


def _span(entry: Entry, request: dict[bytes, bytes]) -> tuple[int, int] | None:
    """The one range to send, or None for the whole entity (no Range, or an If-Range of
    some other version)."""
    raw_range = request.get(b"range")
    if not raw_range:
        return None
    if_range = request.get(b"if-range")
    if if_range is not None and if_range.strip() != entry.etag:
        return None  # a range of some other version: send this one whole
    return parse_range(raw_range.decode("latin-1"), entry.size)


async def send_entry(scope: Scope, receive: Receive, send: Send, entry: Entry,
                     request: dict[bytes, bytes], *, vary: bool = False) -> None:
    """Answer with ``entry`` honouring HEAD, If-None-Match and Range."""
    try:
        ready = answer(entry, request, head_only=scope["method"] == "HEAD", vary=vary)
        span = _span(entry, request) if ready is None else None
    except RangeNotSatisfiable:
        refusal = AtcdnError(416, "RangeNotSatisfiable", f"the entity is {entry.size} bytes",
                             headers={"Content-Range": f"bytes */{entry.size}"})
        await error_response(refusal)(scope, receive, send)
        return
    if ready is not None:
        await send({"type": "http.response.start", "status": ready.status,
                    "headers": ready.headers})
        await send({"type": "http.response.body", "body": ready.body})
        return
    assert entry.path is not None
    headers = entry.headers + [VARY_ACCEPT] if vary else entry.headers
    response = FileResponse(entry.path, headers=_as_dict(headers),
                            stat_result=os.stat(entry.path))
    if span is None and b"range" in request:  # ignored range: whole body, as in memory
        scope = {**scope, "headers": [h for h in scope["headers"] if h[0] != b"range"]}
    await response(scope, receive, send)


def _as_dict(headers: Headers) -> dict[str, str]:
    return {k.decode(): v.decode("latin-1") for k, v in headers}
