"""CID parsing, computing and streaming verification (pure code)."""

from __future__ import annotations

import hashlib

import pytest
from atcdn.core import cid
from hypothesis import given
from hypothesis import strategies as st
from multiformats import CID

KNOWN = "bafkreiepinbumzepnoln7co5vea4kf3lcctnqolb3u6bvsellgznymt2uq"  # sha256(b"hi")


def test_known_value() -> None:
    assert cid.compute(b"hi") == KNOWN
    assert cid.parse(KNOWN) == hashlib.sha256(b"hi").digest()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "base32-lower"),
        (KNOWN.upper(), "base32-lower"),
        ("bafyreiepinbumzepnoln7co5vea4kf3lcctnqolb3u6bvsellgznymt2uq", "raw codec"),
        (KNOWN[:-1], "59 characters"),
        (KNOWN[:-1] + "r", "Pad bits"),
        ("b" + "!" * 58, "not a CID"),
    ],
)
def test_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(cid.CIDError, match=reason):
        cid.parse(text)


@given(st.binary(max_size=4096))
def test_computed_cids_round_trip(data: bytes) -> None:
    text = cid.compute(data)
    assert text.startswith("bafkrei")
    assert cid.from_digest(cid.parse(text)) == text
    # The stdlib encoding is the one multiformats gives.
    assert str(CID("base32", 1, "raw", ("sha2-256", hashlib.sha256(data).digest()))) == text


@given(st.binary(min_size=1, max_size=2048), st.data())
def test_any_changed_byte_fails_verification(data: bytes, draw: st.DataObject) -> None:
    expected = cid.compute(data)
    index = draw.draw(st.integers(0, len(data) - 1))
    flip = draw.draw(st.integers(1, 255))
    changed = bytearray(data)
    changed[index] ^= flip
    verifier = cid.Verifier()
    for start in range(0, len(changed), 100):
        verifier.update(bytes(changed[start:start + 100]))
    assert not verifier.matches(expected)


@given(st.binary(max_size=2048), st.integers(1, 512))
def test_streaming_matches_whole(data: bytes, chunk: int) -> None:
    verifier = cid.Verifier()
    for start in range(0, len(data), chunk):
        verifier.update(data[start:start + chunk])
    assert verifier.matches(cid.compute(data))
    assert verifier.size == len(data)


@given(st.text(max_size=80))
def test_malformed_strings_raise_only_cid_error(text: str) -> None:
    try:
        cid.parse(text)
    except cid.CIDError:
        pass


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=58, max_size=58))
def test_base32_noise_raises_only_cid_error(body: str) -> None:
    try:
        cid.parse("b" + body)
    except cid.CIDError:
        pass
