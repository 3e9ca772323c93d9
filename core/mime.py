"""MIME types from the bytes alone, never from a name or a client's claim.

Pure code, no I/O: the origin records the type when a blob is stored and the edge uses
the same function to refuse to serve active content (SVG, HTML, XML) inline.
"""

from __future__ import annotations

import filetype

OCTET_STREAM = "application/octet-stream"
SNIFF_BYTES = 8192  # enough for filetype's matchers and for a text prologue

# Types a browser may execute scripts in when served inline.
ACTIVE_TYPES = frozenset({"image/svg+xml", "text/html", "application/xml", "text/xml",
                          "application/xhtml+xml"})

_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<iframe")


def sniff(head: bytes) -> str:
    """The MIME type of a blob whose first bytes are ``head``."""
    kind = filetype.guess(head[:SNIFF_BYTES]) if head else None
    if kind is not None:
        return kind.mime
    return _sniff_text(head[:SNIFF_BYTES])


def is_active(mime: str) -> bool:
    """True for types that must never be served inline (scripts could run)."""
    return mime in ACTIVE_TYPES


def _sniff_text(head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text:
        return OCTET_STREAM
    if b"<svg" in text and (text.startswith((b"<", b"<?xml"))):
        return "image/svg+xml"
    if any(text.startswith(marker) for marker in _HTML_MARKERS):
        return "text/html"
    if text.startswith(b"<?xml"):
        return "application/xml"
    if text.startswith(b"<!--") and (b"<html" in text or b"<script" in text):
        return "text/html"
    return OCTET_STREAM
