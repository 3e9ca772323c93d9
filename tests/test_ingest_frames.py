"""The pure parts of ``atcdn ingest``: frame decoding, blob references anywhere in a record,
the cursor that only moves past fully handled events, URLs, and the ingest database."""

from __future__ import annotations

from pathlib import Path

import pytest
from atcdn.core import cid as cids
from atcdn.ingest.blobrefs import BlobRef, blob_refs, mime_allowed, parse_patterns
from atcdn.ingest.cursor import CursorTracker
from atcdn.ingest.follow import event_lag, subscribe_url
from atcdn.ingest.frames import (
    Account,
    Commit,
    ErrorFrame,
    FrameError,
    Identity,
    Info,
    Other,
    decode,
)
from atcdn.ingest.records import RecordIndex, record_uri
from atcdn.ingest.state import State
from libipld import encode_dag_cbor

from tests.helpers.firehose import (
    TIME,
    account,
    blob,
    commit,
    error_frame,
    frame,
    link,
    post,
)

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
A, B, C, D = (cids.compute(bytes([n])) for n in range(4))


# -- blob references -------------------------------------------------------------------


def test_refs_in_known_places() -> None:
    profile = {"$type": "app.bsky.actor.profile", "avatar": blob(A), "banner": blob(B, "image/png")}
    assert blob_refs(profile) == [BlobRef(A, "image/jpeg", 1000), BlobRef(B, "image/png", 1000)]
    video = {"$type": "app.bsky.feed.post", "embed": {
        "$type": "app.bsky.embed.video", "video": blob(C, "video/mp4", 5_000_000),
        "captions": [{"lang": "en", "file": blob(D, "text/vtt", 100)}]}}
    assert [r.cid for r in blob_refs(video)] == [C, D]
    with_media = {"embed": {"$type": "app.bsky.embed.recordWithMedia",
                            "record": {"record": {"uri": "at://x", "cid": "bafy..."}},
                            "media": {"images": [{"image": blob(A)}, {"image": blob(B)}]}}}
    assert [r.cid for r in blob_refs(with_media)] == [A, B]


def test_refs_anywhere_in_an_unknown_record() -> None:
    record = {"$type": "com.example.future", "deep": [[{"x": {"y": [blob(A)]}}]],
              "thumb": {"$type": "blob", "ref": {"$link": B}, "mimeType": "image/webp", "size": 7}}
    assert blob_refs(record) == [BlobRef(A, "image/jpeg", 1000), BlobRef(B, "image/webp", 7)]


def test_legacy_refs_and_duplicates() -> None:
    record = {"avatar": {"cid": A, "mimeType": "image/png"}, "again": blob(A),
              "strong": {"cid": "bafyrei-not-a-blob", "uri": "at://..."}}
    assert blob_refs(record) == [BlobRef(A, "image/png", None)]


def test_not_refs() -> None:
    assert blob_refs({"$type": "blob", "mimeType": "image/png"}) == []  # no ref
    assert blob_refs({"$type": "blob", "ref": 5}) == []
    assert blob_refs({"text": "blob", "size": 3}) == []
    assert blob_refs("a string") == [] and blob_refs(None) == []


def test_refs_survive_a_decoded_frame() -> None:
    """The link libipld decodes (CID bytes) comes back as the CID string."""
    event = decode(commit(7, DID, {"app.bsky.feed.post/1": post(A, B)}))
    assert isinstance(event, Commit)
    assert [r.cid for r in blob_refs(event.ops[0].record)] == [A, B]


def test_mime_patterns() -> None:
    patterns = parse_patterns("image/*, video/*")
    assert mime_allowed("image/jpeg", patterns) and mime_allowed("VIDEO/mp4", patterns)
    assert not mime_allowed("text/vtt", patterns) and not mime_allowed(None, patterns)
    assert mime_allowed("text/vtt", ["*"])


# -- frames ----------------------------------------------------------------------------


def test_commit_frame() -> None:
    event = decode(commit(12, DID, {"app.bsky.feed.post/a": post(A)}, deletes=("x/y",)))
    assert isinstance(event, Commit)
    assert (event.seq, event.repo, event.time) == (12, DID, TIME)
    create, delete = event.ops
    assert (create.action, create.path, create.error) == ("create", "app.bsky.feed.post/a", None)
    assert create.record["embed"]["images"][0]["image"]["ref"] == link(A)
    assert (delete.action, delete.path, delete.record) == ("delete", "x/y", None)


def test_a_car_slice_that_lies_is_refused_per_record() -> None:
    event = decode(commit(3, DID, {"app.bsky.feed.post/a": post(A)}, lie=True))
    assert isinstance(event, Commit)
    assert event.ops[0].record is None and event.ops[0].error == "cid_mismatch"


def test_missing_block() -> None:
    data = frame("#commit", {"seq": 1, "repo": DID, "blocks": b"", "time": TIME,
                             "ops": [{"action": "create", "path": "a/b", "cid": link(A)}]})
    with pytest.raises(FrameError) as caught:
        decode(data)
    assert caught.value.reason == "bad_car"


def test_other_kinds() -> None:
    assert decode(account(5, DID, False, "takendown")) == Account(5, DID, TIME, False, "takendown")
    identity = frame("#identity", {"seq": 6, "did": DID, "time": TIME})
    assert decode(identity) == Identity(6, DID, TIME)
    assert decode(frame("#info", {"name": "OutdatedCursor"})) == Info("OutdatedCursor", None)
    assert decode(error_frame("FutureCursor", "no")) == ErrorFrame("FutureCursor", "no")
    assert decode(frame("#sync", {"seq": 9, "did": DID, "time": TIME})) == Other("#sync", 9, TIME)


@pytest.mark.parametrize("data, reason", [
    (b"", "bad_shape"),
    (b"\xff\x00garbage", "bad_cbor"),
    ("a text frame", "not_binary"),
    (encode_dag_cbor({"op": 1, "t": "#commit"}), "bad_shape"),  # header only
    (encode_dag_cbor({"op": 1, "t": "#commit"}) + encode_dag_cbor({"seq": 1})[:-1], "bad_cbor"),
    (encode_dag_cbor({"op": 7}) + encode_dag_cbor({}), "bad_header"),
    (frame("#commit", {"seq": -1, "repo": DID}), "bad_seq"),
    (frame("#commit", {"seq": 1, "repo": "did:evil:../../x", "ops": [], "blocks": b""}), "bad_did"),
    (frame("#commit", {"seq": 1, "repo": DID, "ops": "x", "blocks": b""}), "bad_commit"),
    (frame("#commit", {"seq": 1, "repo": DID, "blocks": b"\x05nope",
                       "ops": [{"action": "create", "path": "a/b", "cid": link(A)}]}), "bad_car"),
    (frame("#account", {"seq": 1, "did": 5}), "bad_did"),
])
def test_malformed_frames(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode(data)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_bad_ops_are_marked_not_fatal() -> None:
    data = frame("#commit", {"seq": 1, "repo": DID, "blocks": b"", "time": TIME,
                             "ops": [5, {"action": "explode", "path": "a/b"}]})
    event = decode(data)
    assert isinstance(event, Commit) and [op.error for op in event.ops] == ["bad_op", "bad_op"]


# -- the cursor ------------------------------------------------------------------------


def test_cursor_waits_for_the_oldest_unfinished_event() -> None:
    tracker = CursorTracker(start=10)
    first = tracker.begin(11, 2)
    tracker.begin(12, 0)
    third = tracker.begin(13, 1)
    assert tracker.durable == 10
    tracker.finish(third)
    assert tracker.durable == 10  # 11 still has work
    tracker.finish(first)
    assert tracker.durable == 10
    tracker.finish(first)
    assert tracker.durable == 13 and tracker.in_flight == 0


def test_cursor_starts_empty() -> None:
    tracker = CursorTracker()
    assert tracker.durable is None
    tracker.begin(1, 0)
    assert tracker.durable == 1


# -- URLs and times --------------------------------------------------------------------


def test_subscribe_url() -> None:
    assert subscribe_url("ws://127.0.0.1:2583", None) == \
        "ws://127.0.0.1:2583/xrpc/com.atproto.sync.subscribeRepos"
    assert subscribe_url("wss://bsky.network/", 42) == \
        "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos?cursor=42"
    assert subscribe_url("wss://h/xrpc/com.atproto.sync.subscribeRepos", 1).endswith(
        "subscribeRepos?cursor=1")
    with pytest.raises(ValueError):
        subscribe_url("https://bsky.network", None)


def test_event_lag() -> None:
    assert event_lag("1970-01-01T00:00:10.000Z", 15.0) == pytest.approx(5.0)
    assert event_lag("yesterday", 15.0) is None


# -- the ingest database ---------------------------------------------------------------


def test_record_index(tmp_path: Path) -> None:
    index = RecordIndex(tmp_path)
    uri = record_uri(DID, "app.bsky.feed.post/3k")
    assert uri == f"at://{DID}/app.bsky.feed.post/3k"
    assert index.blobs_of(uri) is None
    index.put(uri, DID, [A, B])
    assert index.blobs_of(uri) == (DID, [A, B])
    index.put(uri, DID, [C])  # an update replaces
    assert RecordIndex(tmp_path).blobs_of(uri) == (DID, [C])  # durable, shared file
    index.delete(uri)
    assert index.blobs_of(uri) is None
    index.put(uri, DID, [])
    assert index.count() == 0


def test_state(tmp_path: Path) -> None:
    state = State(tmp_path)
    assert state.cursor("ws://a") is None
    state.save_cursor("ws://a", 41)
    assert State(tmp_path).cursor("ws://a") == 41 and state.cursor("ws://b") is None
    state.note_takedown(DID, "takendown")
    assert state.is_own_takedown(DID)
    state.forget_takedown(DID)
    assert not state.is_own_takedown(DID)
    state.save_repo_page("http://pds", "c1", [DID])
    assert state.repo_list_position("http://pds") == ("c1", False)
    assert state.repos_to_backfill(pds="http://pds") == [(DID, None)]
    state.save_blob_position(DID, A, done=False)
    assert state.repos_to_backfill(dids=[DID]) == [(DID, A)]
    state.save_blob_position(DID, A, done=True)
    assert state.repos_to_backfill(pds="http://pds") == [] and state.backfill_progress() == (1, 1)
    state.clear_backfill()
    assert state.backfill_progress() == (0, 0)
