"""Bounded decoding of strangers' bodies (core/bodies.py) and the memory of their
failures (core/refusals.py): pure code, tested directly."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest
from atcdn.core.bodies import (
    MAX_RATIO,
    STEP,
    BodyError,
    BodyTooLarge,
    InflatedTooFar,
    Inflater,
)
from atcdn.core.errors import AtcdnError
from atcdn.core.refusals import Refusals


def decode(inflater: Inflater, body: bytes, chunk: int = 65536) -> bytes:
    out = []
    for start in range(0, len(body), chunk):
        out += list(inflater.feed(body[start:start + chunk]))
    out += list(inflater.finish())
    assert all(len(piece) <= STEP for piece in out)
    return b"".join(out)


@pytest.mark.parametrize("encoding, encode", [
    (None, lambda d: d), ("identity", lambda d: d), ("gzip", gzip.compress),
    ("deflate", zlib.compress), ("GZIP", lambda d: gzip.compress(d[:10]) + gzip.compress(d[10:])),
])
def test_decodes_and_counts(encoding, encode) -> None:
    data = os.urandom(300_000)
    wire = encode(data)
    inflater = Inflater(encoding, 1 << 20)
    assert decode(inflater, wire) == data
    assert inflater.received == len(wire) and inflater.decoded == len(data)


def test_a_bomb_stops_early_with_bounded_steps() -> None:
    bomb = gzip.compress(bytes(200 * 1024 * 1024), compresslevel=9)  # ~200 KB
    inflater = Inflater("gzip", 300 * 1024 * 1024)
    with pytest.raises(InflatedTooFar):
        decode(inflater, bomb)
    # Stopped near the ratio, nowhere near the 200 MB the bomb holds.
    assert inflater.decoded <= MAX_RATIO * inflater.received + 64 * 1024 + STEP


def test_limits_hold_on_the_wire_and_decoded() -> None:
    with pytest.raises(BodyTooLarge):
        decode(Inflater(None, 1000), os.urandom(1001))
    with pytest.raises(BodyTooLarge):  # compressible, under the ratio, over the limit
        decode(Inflater("gzip", 100_000), gzip.compress(os.urandom(60_000) + bytes(60_000)))
    with pytest.raises(BodyTooLarge):  # on the wire: random bytes grow when gzipped
        decode(Inflater("gzip", 100_000), gzip.compress(os.urandom(99_990)))


@pytest.mark.parametrize("encoding, body", [
    ("br", b"x"), ("zstd", b"x"), ("gzip, gzip", b"x"), ("gzip", b"not gzip at all"),
    ("gzip", gzip.compress(os.urandom(1000))[:-30]),  # truncated
])
def test_unsupported_or_broken_encodings_are_refused(encoding: str, body: bytes) -> None:
    with pytest.raises(BodyError):
        decode(Inflater(encoding, 1 << 20), body)


def test_refusals_remember_then_back_off() -> None:
    now = [0.0]
    refusals = Refusals(remember=60, strikes=3, backoff=30, max_entries=100,
                        timer=lambda: now[0])
    bad = AtcdnError(502, "VerificationFailed", "bytes do not match")
    refusals.check("https://pds", "a")
    refusals.failed("https://pds", "a", bad)
    with pytest.raises(AtcdnError) as caught:
        refusals.check("https://pds", "a")
    assert caught.value.error == "VerificationFailed"
    refusals.check("https://pds", "b")  # another blob: still asked
    refusals.failed("https://pds", "x", AtcdnError(504, "UpstreamTimeout", "slow"))  # not counted
    refusals.failed("https://pds", "b", bad)
    refusals.check("https://other", "a")
    refusals.failed("https://pds", "c", bad)
    with pytest.raises(AtcdnError) as caught:
        refusals.check("https://pds", "d")
    assert caught.value.status == 503 and caught.value.error == "UpstreamBackoff"
    refusals.check("https://other", "a")  # other PDSes are not affected
    now[0] = 31.0
    refusals.check("https://pds", "d")  # the backoff is over
    now[0] = 61.0
    refusals.check("https://pds", "a")  # and the failure forgotten
    for n in range(1000):  # bounded
        refusals.failed(f"https://p{n}", "a", bad)
    assert len(refusals._failed) <= 100
