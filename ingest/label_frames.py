"""Label stream frames (``com.atproto.label.subscribeLabels``) and what a label means.

Pure code, no I/O. A frame is two DAG-CBOR objects, a header ``{op, t}`` (``op: -1`` is an
error frame) and a body: ``#labels {seq, labels: [...]}`` or ``#info {name, message?}``.
Each label is ``{ver, src, uri, cid?, val, neg?, cts, exp?, sig}``; ``uri`` is a DID (an
account) or an ``at://<did>/<collection>/<rkey>`` record URI. ``decode`` returns a
``Labels`` batch (malformed labels counted in ``rejected`` by reason, never raised), an
``Info`` or an ``ErrorFrame`` (shared with the firehose), or raises ``FrameError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atcdn.core import did as dids
from atcdn.ingest import frames
from atcdn.ingest.frames import ErrorFrame, FrameError, Info, Other
from libipld import decode_dag_cbor_multi

MAX_LABELS = 1000  # per frame; more is malformed (Ozone sends one label per frame)
MAX_VALUE = 128  # lexicon: val maxLength 128


@dataclass(frozen=True)
class Label:
    src: str
    uri: str
    val: str
    neg: bool
    cts: str
    exp: str | None
    raw: dict[str, Any]  # the label as received, for its signature

    @property
    def subject_did(self) -> str:
        """The account the label is about: the DID, or the repo of a record URI."""
        return self.uri if self.uri.startswith("did:") else self.uri[5:].split("/", 1)[0]

    @property
    def is_record(self) -> bool:
        return self.uri.startswith("at://")

    def active(self, now: datetime) -> bool:
        """A label holds unless negated or expired (an expired label counts as negated)."""
        if self.neg:
            return False
        return self.exp is None or parse_time(self.exp) > now


@dataclass(frozen=True)
class Labels:
    seq: int
    labels: list[Label] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # reasons, one per unusable label


LabelEvent = Labels | Info | ErrorFrame


def decode(frame: bytes) -> LabelEvent:
    """The event in one binary frame; ``FrameError`` for anything malformed.

    The header, error frames and ``#info`` are the firehose's (frames.py decodes them);
    only the ``#labels`` body is read here."""
    event = frames.decode(frame)
    if isinstance(event, Info | ErrorFrame):
        return event
    if not isinstance(event, Other) or event.kind != "#labels":
        raise FrameError("unknown_kind", "not a #labels, #info or error frame")
    body = decode_dag_cbor_multi(frame)[1]  # valid: frames.decode read it
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise FrameError("bad_seq", f"#labels has no valid seq: {seq!r}"[:200])
    raw_labels = body.get("labels")
    if not isinstance(raw_labels, list) or len(raw_labels) > MAX_LABELS:
        raise FrameError("bad_labels", f"#labels {seq}: labels is not a list of <= {MAX_LABELS}")
    batch = Labels(seq)
    for raw in raw_labels:
        try:
            batch.labels.append(parse_label(raw))
        except FrameError as exc:
            batch.rejected.append(exc.reason)
    return batch


def parse_label(raw: Any) -> Label:
    """One label, checked for shape (not for its signature); ``FrameError`` if unusable."""
    if not isinstance(raw, dict):
        raise FrameError("bad_label", "label is not a map")
    src, uri, val, cts = (raw.get(k) for k in ("src", "uri", "val", "cts"))
    neg, exp = raw.get("neg", False), raw.get("exp")
    if not (isinstance(src, str) and isinstance(uri, str) and isinstance(val, str)
            and isinstance(cts, str) and isinstance(neg, bool)
            and (exp is None or isinstance(exp, str))):
        raise FrameError("bad_label", "label lacks src, uri, val or cts, or has bad types")
    if not 0 < len(val) <= MAX_VALUE or len(uri) > 8192:
        raise FrameError("bad_label", "label value or URI out of bounds")
    try:
        dids.parse(src)
        dids.parse(uri if uri.startswith("did:") else _record_did(uri))
        parse_time(cts)
        if exp is not None:
            parse_time(exp)
    except ValueError:
        raise FrameError("bad_label", f"label has a bad DID, URI or time: {uri[:200]!r}") from None
    return Label(src, uri, val, neg, cts, exp, raw)


def _record_did(uri: str) -> str:
    """The DID of ``at://<did>/<collection>/<rkey>``; ValueError for anything else (a
    handle authority, a bare repo, a collection without a record key)."""
    if not uri.startswith("at://"):
        raise ValueError("not an at:// URI")
    parts = uri[5:].split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError("not a record URI")
    return parts[0]


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp (as labels carry), always timezone-aware."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)

