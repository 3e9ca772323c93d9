"""Firehose frames (``com.atproto.sync.subscribeRepos``), decoded with libipld.

Pure code, no I/O. A frame is two DAG-CBOR objects: a header ``{op, t}`` (``op: -1`` is an
error frame) and the message. ``decode`` turns one frame into one of the event types
below or raises ``FrameError`` with a short, bounded ``reason`` (a metric label) and a
message. A ``#commit`` carries a CAR slice; ``Commit.ops`` are its record operations, each
create/update with the record decoded from its block *after* checking that the block
hashes to the CID the operation names (a slice that lies about its CIDs is refused).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from atcdn.core import did as dids
from libipld import decode_car, decode_dag_cbor_multi, encode_dag_cbor

# CIDv1, dag-cbor codec (0x71), sha2-256, 32-byte digest: how repo records are addressed.
_RECORD_CID_PREFIX = bytes([0x01, 0x71, 0x12, 0x20])


class FrameError(ValueError):
    """A frame (or part of one) that cannot be used; ``reason`` is a bounded label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RecordOp:
    """One operation of a commit. ``record`` is the decoded record (create/update only);
    ``error`` says why a create/update has no usable record (a bounded label)."""

    action: str  # create | update | delete
    path: str  # collection/rkey
    record: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Commit:
    seq: int
    repo: str
    time: str
    ops: list[RecordOp] = field(default_factory=list)


@dataclass(frozen=True)
class Account:
    seq: int
    did: str
    time: str
    active: bool
    status: str | None


@dataclass(frozen=True)
class Identity:
    seq: int
    did: str
    time: str


@dataclass(frozen=True)
class Info:
    name: str
    message: str | None


@dataclass(frozen=True)
class ErrorFrame:
    error: str
    message: str | None


@dataclass(frozen=True)
class Other:
    """A kind this follower does not act on (``#sync``, ``#handle``, future kinds); only
    its ``seq`` matters (the cursor moves past it)."""

    kind: str
    seq: int | None
    time: str | None


Event = Commit | Account | Identity | Info | ErrorFrame | Other


def decode(frame: bytes) -> Event:
    """The event in one binary frame; ``FrameError`` for anything malformed."""
    if not isinstance(frame, bytes):
        raise FrameError("not_binary", "text frame on a binary stream")
    try:
        parts = decode_dag_cbor_multi(frame)
    except (ValueError, RecursionError, OverflowError) as exc:
        raise FrameError("bad_cbor", f"frame is not DAG-CBOR: {exc}") from None
    if len(parts) != 2 or not isinstance(parts[0], dict) or not isinstance(parts[1], dict):
        raise FrameError("bad_shape", f"frame has {len(parts)} objects, not header + body maps")
    header, body = parts
    op = header.get("op")
    if op == -1:
        return ErrorFrame(_text(body, "error") or "Unknown", _text(body, "message"))
    if op != 1:
        raise FrameError("bad_header", f"unknown frame op {op!r}")
    kind = header.get("t")
    if kind == "#commit":
        return _commit(body)
    if kind == "#account":
        return Account(_seq(body), _did(body, "did"), _text(body, "time") or "",
                       body.get("active") is True, _text(body, "status"))
    if kind == "#identity":
        return Identity(_seq(body), _did(body, "did"), _text(body, "time") or "")
    if kind == "#info":
        return Info(_text(body, "name") or "Unknown", _text(body, "message"))
    if not isinstance(kind, str):
        raise FrameError("bad_header", "frame header has no message type")
    seq = body.get("seq")
    return Other(kind, seq if isinstance(seq, int) and seq >= 0 else None, _text(body, "time"))


def _commit(body: dict) -> Commit:
    seq = _seq(body)
    repo = _did(body, "repo")
    ops = body.get("ops")
    blocks_car = body.get("blocks")
    if not isinstance(ops, list) or not isinstance(blocks_car, bytes):
        raise FrameError("bad_commit", f"commit {seq} lacks ops or blocks")
    blocks: dict[bytes, Any] = {}
    if any(isinstance(op, dict) and op.get("action") in ("create", "update") for op in ops):
        try:
            _, blocks = decode_car(blocks_car)
        except (ValueError, RecursionError, OverflowError) as exc:
            raise FrameError("bad_car", f"commit {seq}: CAR slice does not decode: {exc}") from None
    return Commit(seq, repo, _text(body, "time") or "", [_op(op, blocks) for op in ops])


def _op(op: Any, blocks: dict[bytes, Any]) -> RecordOp:
    if not isinstance(op, dict):
        return RecordOp("invalid", "", error="bad_op")
    action, path = op.get("action"), op.get("path")
    if not isinstance(path, str) or action not in ("create", "update", "delete"):
        return RecordOp(str(action)[:16], str(path)[:300], error="bad_op")
    if action == "delete":
        return RecordOp(action, path)
    cid = op.get("cid")
    if not isinstance(cid, bytes) or cid not in blocks:
        return RecordOp(action, path, error="missing_block")
    record = blocks[cid]
    if not verified(cid, record):
        return RecordOp(action, path, error="cid_mismatch")
    return RecordOp(action, path, record)


def verified(cid: bytes, value: Any) -> bool:
    """Whether ``value`` is the DAG-CBOR block that ``cid`` (binary) names.

    libipld's decoder accepts only strict DAG-CBOR (sorted keys, minimal lengths), whose
    encoding is unique, so re-encoding the decoded block gives back its exact bytes.
    """
    if cid[:4] != _RECORD_CID_PREFIX or len(cid) != 36:
        return False
    try:
        return hashlib.sha256(encode_dag_cbor(value)).digest() == cid[4:]
    except (ValueError, RecursionError, OverflowError):
        return False


def _seq(body: dict) -> int:
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise FrameError("bad_seq", f"message has no valid seq: {seq!r}"[:200])
    return seq


def _did(body: dict, key: str) -> str:
    did = body.get(key)
    try:
        if isinstance(did, str) and len(did) <= 2048:
            return dids.parse(did)
    except dids.DIDError:
        pass
    raise FrameError("bad_did", f"message has no valid {key}: {did!r}"[:200])


def _text(body: dict, key: str) -> str | None:
    value = body.get(key)
    return value[:1000] if isinstance(value, str) else None
