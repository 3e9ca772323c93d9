"""The edge's public URLs, DIDs, format negotiation and cache keys (pure code, no I/O).

``/img/{preset}/plain/{did}/{cid}[@{format}]`` and ``/blob/{did}/{cid}``; the DID may
come raw (``did:plc:...``) or percent-encoded (``did%3Aplc%3A...``). Paths arrive here
already percent-decoded once (ASGI ``scope["path"]``), so a DID is decoded again only
when it still carries escapes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import unquote

from atcdn.core import cid as cids
from atcdn.core import did as dids
from atcdn.edge.presets import FORMATS, Format, Preset


class UrlError(ValueError):
    """A path that names no valid resource; the message says why (answered with 400)."""


@dataclass(frozen=True)
class ImageRequest:
    preset: Preset
    did: str
    cid: str
    fmt: Format | None  # None: no @suffix, pick by Accept


@dataclass(frozen=True)
class BlobRequest:
    did: str
    cid: str


def parse_did(text: str) -> str:
    """The canonical DID in ``text`` (raw or percent-encoded), or raise UrlError."""
    try:
        return dids.parse(text)
    except dids.DIDError as exc:
        raise UrlError(str(exc)) from None


@functools.lru_cache(maxsize=1 << 16)
def parse_cid(text: str) -> str:
    # Cached: even the fast CID check costs more than a whole memory hit. Errors are not cached.
    try:
        cids.parse(text)
    except cids.CIDError as exc:
        raise UrlError(f"bad CID: {exc}") from None
    return text


def parse_image_path(path: str, presets: dict[str, Preset], *,
                     avif: bool = False) -> ImageRequest:
    """Parse ``/img/{preset}/plain/{did}/{cid}[@{format}]``; ``@avif`` only when the edge
    offers AVIF (``avif``): its encoder costs ~20x JPEG's, an operator's choice."""
    parts = path.split("/")
    if len(parts) != 6 or parts[1] != "img" or parts[3] != "plain":
        raise UrlError("image paths are /img/{preset}/plain/{did}/{cid}[@{format}]")
    preset = presets.get(parts[2])
    if preset is None:
        raise UrlError(f"unknown preset {parts[2]!r}; known: {', '.join(sorted(presets))}")
    cid, at, suffix = parts[5].partition("@")
    fmt: Format | None = None
    if at:
        if suffix not in FORMATS:
            raise UrlError(f"unknown format {suffix!r}; known: {', '.join(FORMATS)}")
        if suffix == "avif" and not avif:
            raise UrlError("avif is not offered by this edge (ATCDN_EDGE_ENABLE_AVIF)")
        fmt = suffix  # type: ignore[assignment]
    return ImageRequest(preset, parse_did(parts[4]), parse_cid(cid), fmt)


def parse_blob_path(path: str) -> BlobRequest:
    """Parse ``/blob/{did}/{cid}``."""
    parts = path.split("/")
    if len(parts) != 4 or parts[1] != "blob":
        raise UrlError("blob paths are /blob/{did}/{cid}")
    return BlobRequest(parse_did(parts[2]), parse_cid(parts[3]))


def parse_purge_path(path: str) -> tuple[str | None, str | None]:
    """(did, cid) named by a path a moderation tool asks to purge.

    Accepts ``/img/{did}/{cid}`` (the reference tools' pattern), any image or blob URL,
    and ``/watch/{did}/{cid}/...``; a bare ``/img/{did}`` names a whole account.
    """
    parts = [p for p in unquote(path.split("?")[0]).split("/") if p]
    if len(parts) >= 2 and parts[0] in ("img", "blob", "watch"):
        if parts[0] == "img" and len(parts) >= 5 and parts[2] == "plain":
            parts = [parts[0], parts[3], parts[4]]
        did = parse_did(parts[1])
        cid = parse_cid(parts[2].partition("@")[0]) if len(parts) >= 3 else None
        return did, cid
    raise UrlError(f"cannot purge {path!r}: expected /img/..., /blob/... or /watch/...")


MAX_CACHED_ACCEPT = 512  # longer Accept strings are parsed each time, never kept


def negotiate(accept: str, avif: bool = False) -> Format:
    """The format for an unsuffixed image URL: avif (when enabled), webp, else jpeg.

    Only these values reach the cache key, so the many Accept strings browsers send
    collapse into at most three variants. Parsed strings are cached (browsers send few
    distinct ones), bounded in entries and in key length: at most 1024 x 512 bytes.
    """
    if len(accept) > MAX_CACHED_ACCEPT:
        return _negotiate(accept, avif)
    return ACCEPT_CACHE(accept, avif)


def _negotiate(accept: str, avif: bool) -> Format:
    if "image/" not in accept:
        return "jpeg"
    accepted = set()
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        if "q=0" in params.replace(" ", "") and not re.search(r"q=0\.0*[1-9]", params):
            continue
        accepted.add(media.strip().lower())
    if avif and "image/avif" in accepted:
        return "avif"
    if "image/webp" in accepted:
        return "webp"
    return "jpeg"


ACCEPT_CACHE = functools.lru_cache(maxsize=1024)(_negotiate)


def image_key(cid: str, preset: str, fmt: Format) -> str:
    """The cache key of a rendering. The DID is not part of it: content is addressed."""
    return f"img/{cid}/{preset}/{fmt}"


def source_key(cid: str) -> str:
    return f"src/{cid}"


def image_etag(cid: str, preset: str, fmt: Format) -> str:
    return f'"{cid}.{preset}.{fmt}"'


def blob_etag(cid: str) -> str:
    return f'"{cid}"'
