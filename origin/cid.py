"""AT Protocol blob CIDs: CIDv1, raw codec, sha2-256, base32-lower (``bafkrei...``).

Pure code, no I/O. ``parse`` accepts only the canonical blob CID form and says exactly
what is wrong with anything else; ``Verifier`` hashes a stream chunk by chunk so a 300 MB
video never has to sit in memory whole.
"""

from __future__ import annotations

import hashlib

from multiformats import CID

RAW_CODEC = "raw"
SHA2_256 = "sha2-256"
BLOB_CID_LENGTH = 59  # "b" + base32(0x01 0x55 0x12 0x20 + 32-byte digest)


class CIDError(ValueError):
    """A string that is not a valid AT Protocol blob CID."""


def parse(text: str) -> CID:
    """Return the CID in ``text``, or raise ``CIDError`` with the precise reason."""
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
    if len(cid.raw_digest) != 32:
        raise CIDError("sha2-256 digest must be 32 bytes")
    if str(cid) != text:
        raise CIDError("CID is not in canonical base32-lower form")
    return cid


def digest_of(text: str) -> bytes:
    """The 32-byte sha256 digest named by a blob CID string."""
    return bytes(parse(text).raw_digest)


def from_digest(digest: bytes) -> str:
    """The blob CID string for a sha256 digest."""
    return str(CID("base32", 1, RAW_CODEC, (SHA2_256, digest)))


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
        return self._hash.digest() == digest_of(expected)
