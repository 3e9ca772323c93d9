"""Bounded reading of response bodies from strangers (PDSes, DID hosts).

We ask for ``Accept-Encoding: identity``; a host that compresses anyway is decoded here,
not by httpx, so that no step can inflate without bound: every step yields at most
``STEP`` bytes, the bytes received on the wire and the decoded bytes are both held to the
caller's limit, and the decoded size may not pass ``MAX_RATIO`` times the bytes received
(plus ``RATIO_SLACK``). Media (JPEG, PNG, MP4...) barely compresses; a body that inflates
a hundredfold is a bomb, refused long before it reaches the size limit.

``Inflater`` is pure (no I/O); ``iter_body`` and ``read_body`` drive it from an httpx
response opened with ``client.stream(...)``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

import httpx

IDENTITY = {"accept-encoding": "identity"}
STEP = 1 << 20  # most bytes one decode step may produce
MAX_RATIO = 20
RATIO_SLACK = 64 * 1024
# gzip and zlib-wrapped or raw deflate, the encodings httpx would have decoded itself;
# anything else (br, zstd) from a host asked for identity is refused.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
          "deflate": 32 + zlib.MAX_WBITS}


class BodyError(Exception):
    """A body refused: undecodable, or an encoding we do not decode (we asked for
    identity)."""


class BodyTooLarge(BodyError):
    """The body passed its limit (on the wire or decoded)."""


class InflatedTooFar(BodyError):
    """The body inflated past ``MAX_RATIO``: a decompression bomb."""


class Inflater:
    """Decodes one body chunk by chunk; ``received`` and ``decoded`` count its bytes."""

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        self.limit = limit
        self.received = 0
        self.decoded = 0
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in _WBITS):
            raise BodyError(f"unsupported content-encoding {content_encoding!r}")
        self._wbits = _WBITS[codings[0]] if codings else None
        self._zlib = zlib.decompressobj(self._wbits) if self._wbits else None

    def feed(self, raw: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next raw chunk, in pieces of at most STEP bytes."""
        self.received += len(raw)
        if self.received > self.limit:
            raise BodyTooLarge(f"body exceeds {self.limit} bytes")
        if self._zlib is None:
            yield from self._count(raw)
            return
        data = raw
        while data:
            try:
                piece = self._zlib.decompress(data, STEP)
            except zlib.error as exc:
                raise BodyError(f"undecodable body: {exc}") from None
            data = self._zlib.unconsumed_tail
            if self._zlib.eof and self._zlib.unused_data:  # another gzip member follows
                data = self._zlib.unused_data + data
                self._zlib = zlib.decompressobj(self._wbits)
            yield from self._count(piece)

    def finish(self) -> Iterator[bytes]:
        if self._zlib is not None:
            try:
                rest = self._zlib.flush()
            except zlib.error as exc:
                raise BodyError(f"undecodable body: {exc}") from None
            yield from self._count(rest)
            if not self._zlib.eof:
                raise BodyError("truncated compressed body")

    def _count(self, piece: bytes) -> Iterator[bytes]:
        if not piece:
            return
        self.decoded += len(piece)
        if self.decoded > self.limit:
            raise BodyTooLarge(f"body exceeds {self.limit} bytes")
        if self.decoded > MAX_RATIO * self.received + RATIO_SLACK:
            raise InflatedTooFar(f"{self.received} bytes inflated past {self.decoded}")
        yield piece


async def iter_body(response: httpx.Response, inflater: Inflater) -> AsyncIterator[bytes]:
    """Decoded chunks of ``response`` (opened with ``stream``), bounded by ``inflater``."""
    async for raw in response.aiter_raw():
        for piece in inflater.feed(raw):
            yield piece
    for piece in inflater.finish():
        yield piece


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The whole decoded body, at most ``limit`` bytes on the wire and decoded."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body is {declared} bytes, the limit is {limit}")
    inflater = Inflater(response.headers.get("content-encoding"), limit)
    return b"".join([piece async for piece in iter_body(response, inflater)])
