"""AT Protocol blob CIDs: CIDv1, raw codec, sha2-256, base32-lower (``bafkrei...``).

Pure code, no I/O. ``parse`` accepts only the canonical blob CID form and says exactly
what is wrong with anything else (multiformats gives the diagnosis); ``Verifier`` hashes a stream chunk by chunk so a 300 MB
video never has to sit in memory whole.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import NoReturn

from multiformats import CID

RAW_CODEC = "raw"
SHA2_256 = "sha2-256"
BLOB_CID_LENGTH = 59  # "b" + base32(0x01 0x55 0x12 0x20 + 32-byte digest)
_BLOB_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])  # CIDv1, raw, sha2-256, 32 bytes


class CIDError(ValueError):
    """A string that is not a valid AT Protocol blob CID."""


def parse(text: str) -> bytes:
    """Validate a blob CID and return the 32-byte sha256 digest it names.

    Raises ``CIDError`` with the precise reason. Valid CIDs take a stdlib fast path
    (a few microseconds; multiformats' checked decode costs about a millisecond, which
    every request would pay); only a rejected string goes through multiformats to say
    exactly what is wrong with it.
    """
    if isinstance(text, str) and len(text) == BLOB_CID_LENGTH and text[0] == "b":
        try:
            raw = base64.b32decode(text[1:].upper() + "======")
        except (binascii.Error, ValueError):
            raw = b""
        if raw[:4] == _BLOB_PREFIX and text == from_digest(raw[4:]):
            return raw[4:]
    _diagnose(text)


def _diagnose(text: object) -> NoReturn:
    """Raise ``CIDError`` saying why ``text`` is not a canonical blob CID."""
    if not isinstance(text, str):
        raise CIDError("a CID must be a string")
    if not text:
        raise CIDError("empty CID")
    if text[0] != "b":
        raise CIDError("blob CIDs use base32-lower multibase (prefix 'b'), got prefix %r" % text[0])
    if len(text) != BLOB_CID_LENGTH:
        raise CIDError(f"blob CIDs are {BLOB_CID_LENGTH} characters long, got {len(text)}")
    try:
        cid = CID.decode(text)
    except Exception as exc:  # multiformats raises several unrelated types
        raise CIDError(f"not a CID: {exc}") from None
    if cid.version != 1:
        raise CIDError(f"blob CIDs are CIDv1, got CIDv{cid.version}")
    if cid.codec.name != RAW_CODEC:
        raise CIDError(f"blob CIDs use the raw codec (0x55), got {cid.codec.name}")
    if cid.hashfun.name != SHA2_256:
        raise CIDError(f"blob CIDs use sha2-256, got {cid.hashfun.name}")
    raise CIDError("CID is not in canonical base32-lower form")


def from_digest(digest: bytes) -> str:
    """The blob CID string for a sha256 digest."""
    return "b" + base64.b32encode(_BLOB_PREFIX + digest).decode().lower().rstrip("=")


def compute(data: bytes) -> str:
    """The blob CID of ``data``."""
    return from_digest(hashlib.sha256(data).digest())


class Verifier:
    """Hash a stream incrementally and compare it with a CID at the end."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def cid(self) -> str:
        return from_digest(self._hash.digest())

    def matches(self, expected: str) -> bool:
        return self._hash.digest() == parse(expected)
