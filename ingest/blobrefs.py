"""Blob references anywhere in a decoded record (pure code, no I/O).

A record names blobs as ``{"$type": "blob", "ref": <CID link>, "mimeType", "size"}``, or
in the legacy form ``{"cid": "<CID string>", "mimeType"}``. They can sit anywhere: a
profile's avatar and banner, ``embed.images[].image``, an external embed's thumb, a
video and its caption files, ``recordWithMedia``, feed generator and list avatars, and
record types not invented yet, so the whole record is walked rather than known lexicons.

libipld decodes a CID link to its binary form (``bytes``); the JSON form
``{"$link": "..."}`` and plain strings are accepted too. ``cid`` is not validated here:
the caller decides what to do with a reference that is not a blob CID.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from libipld import encode_cid


@dataclass(frozen=True)
class BlobRef:
    cid: str
    mime: str | None
    size: int | None


def blob_refs(record: Any) -> list[BlobRef]:
    """Every distinct blob reference in ``record``, in document order."""
    found: dict[str, BlobRef] = {}
    stack = [record] if isinstance(record, (dict, list)) else []
    while stack:  # iterative: a record nested as deep as the decoder allows is fine
        value = stack.pop()
        if isinstance(value, dict):
            if "$type" in value or "mimeType" in value:
                ref = _as_ref(value)
                if ref is not None:
                    found.setdefault(ref.cid, ref)
                    continue
            children = [v for v in value.values() if isinstance(v, (dict, list))]
        else:
            children = [v for v in value if isinstance(v, (dict, list))]
        children.reverse()  # popped in document order
        stack += children
    return list(found.values())


def _as_ref(value: dict) -> BlobRef | None:
    mime = value.get("mimeType")
    mime = mime if isinstance(mime, str) else None
    if value.get("$type") == "blob" and "ref" in value:
        cid = _link(value["ref"])
        size = value.get("size")
        size = size if isinstance(size, int) and not isinstance(size, bool) else None
        return BlobRef(cid, mime, size) if cid else None
    if mime is not None and isinstance(value.get("cid"), str) and "$type" not in value:
        return BlobRef(value["cid"], mime, None)  # legacy form: no size
    return None


def _link(ref: Any) -> str | None:
    if isinstance(ref, bytes):
        try:
            return encode_cid(ref)
        except ValueError:
            return None
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict) and isinstance(ref.get("$link"), str):
        return ref["$link"]
    return None


def mime_allowed(mime: str | None, patterns: list[str]) -> bool:
    """Whether a claimed MIME type matches one of ``patterns`` (``image/*``, ``*``, exact)."""
    if "*" in patterns:
        return True
    return mime is not None and any(fnmatchcase(mime.lower(), p) for p in patterns)


def parse_patterns(text: str) -> list[str]:
    return [p.strip().lower() for p in text.split(",") if p.strip()]
