"""Conditional and partial requests for immutable content (pure code, RFC 9110).

An entity never changes (its URL names its bytes), so the rules are short: a matching
``If-None-Match`` means 304, one byte range means 206, an unsatisfiable one 416, and
anything malformed or multi-range is ignored (the whole body, 200), as RFC 9110 allows.
The origin and the edge both answer with these.
"""

from __future__ import annotations

# The Cache-Control of every entity: its URL names its bytes, so it never changes.
IMMUTABLE = "public, max-age=31536000, immutable"


class RangeNotSatisfiable(Exception):
    """A well-formed range that starts past the end (answered 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` of the one range asked for, or None to send everything;
    raises ``RangeNotSatisfiable``."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            length = int(last)
            if length < 0:
                return None
            if length == 0 or size == 0:
                raise RangeNotSatisfiable
            return max(size - length, 0), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or (last and end <= start):
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, or ``*``)."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))
