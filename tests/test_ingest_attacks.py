"""``atcdn ingest follow`` against hostile peers: a stand-in firehose (tests/helpers/firehose.py:
malformed frames, CAR slices that lie, error frames) and the stand-in PDS/PLC
(tests/helpers/standins.py: missing blobs, wrong bytes, a PDS that hangs). Every bad thing
is counted, logged once, never stored, and the follower carries on.

The follower and the origin are real processes; the stand-ins play only what a real PDS
would never do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from atcdn.core import cid as cids
from libipld import encode_dag_cbor

from tests.helpers.env import TOKEN
from tests.helpers.firehose import (
    StandinFirehose,
    blob,
    commit,
    error_frame,
    frame,
    post,
)
from tests.helpers.ingest import Follower, origin_status, wait_until
from tests.helpers.nodes import Origin, Upstream, running_origin, start_upstream

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
NO_DOC = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


@pytest.fixture
def firehose() -> Iterator[StandinFirehose]:
    with StandinFirehose().running() as hose:
        yield hose


@pytest.fixture
def origin_node(tmp_path: Path) -> Iterator[Origin]:
    with running_origin(tmp_path) as node:
        yield node


@pytest.fixture
def pds(upstream: Upstream) -> Upstream:
    """The stand-in as PLC directory and PDS of DID."""
    upstream.add_did(DID, upstream.url)
    return upstream


@pytest.fixture
def follow(firehose: StandinFirehose, origin_node: Origin, pds: Upstream,
           tmp_path: Path) -> Iterator[Callable[..., Follower]]:
    """Start the follower (with extra ``ATCDN_*`` settings); stopped after the test."""
    started: list[Follower] = []

    def start(**env: str) -> Follower:
        follower = Follower(firehose.url, origin_node.url, tmp_path / "ingest",
                            plc_url=pds.url, env=env).start()
        started.append(follower)
        wait_until(lambda: len(firehose.cursors) == 1, 10, "subscribed")  # frames are live
        return follower

    yield start
    for follower in started:
        follower.stop()


def get_blobs(pds: Upstream, cid: str) -> int:
    return sum(1 for line in pds.requests() if "getBlob" in line and cid in line)


def test_malformed_frames_and_lying_car_slices(firehose: StandinFirehose, origin_node: Origin,
                                               pds: Upstream, tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    lied_about = pds.add_blob(b"the PDS has this, but no honest record names it")
    good = pds.add_blob(b"a good blob")
    follower = follow()

    for garbage in (b"\xff\xfe", b"\x1c", b"\xa1"):
        firehose.add(1, garbage)
    firehose.add(1, "a text frame")
    firehose.add(1, encode_dag_cbor({"op": 1, "t": "#commit"}))  # header only
    firehose.add(1, frame("#commit", {"seq": 1, "repo": "did:evil:x", "ops": [], "blocks": b""}))
    firehose.add(2, commit(2, DID, {"app.bsky.feed.post/a": post(lied_about)}, lie=True))
    firehose.add(3, commit(3, DID, {"app.bsky.feed.post/b": post(good)}))

    wait_until(lambda: origin_status(origin_node.url, good) == 200, 10, "the good blob stored")
    assert origin_status(origin_node.url, lied_about) == 404
    assert get_blobs(pds, lied_about) == 0
    assert follower.metric("atcdn_ingest_malformed_frames_total", reason="bad_cbor") == 3
    assert follower.metric("atcdn_ingest_malformed_frames_total") == 6
    assert follower.metric("atcdn_ingest_bad_records_total", reason="cid_mismatch") == 1
    assert follower.alive() and follower.health()["cursor"] == 3
    log = follower.tail()
    assert log.count("(bad_cbor)") == 1  # three of them, logged once
    assert log.count("(cid_mismatch)") == 1
    assert "Traceback" not in log


def test_bad_pds_answers(firehose: StandinFirehose, origin_node: Origin, pds: Upstream,
                         tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    missing = cids.compute(b"a blob the PDS does not have")
    wrong = pds.add_blob(b"the right bytes")
    (pds.root / "blobs" / wrong).write_bytes(b"the wrong bytes")
    hanging = pds.add_blob(b"a blob the PDS never sends")
    (pds.root / "hang").mkdir()
    (pds.root / "hang" / hanging).touch()
    huge = pds.add_blob(b"x" * 300_000)  # claims 1000 bytes; the cap is 100 kB
    orphan = cids.compute(b"an account with no DID document")
    good = pds.add_blob(b"good after all that")
    follower = follow(ATCDN_INGEST_MAX_BLOB_BYTES="100000")

    firehose.add(1, commit(1, DID, {"app.bsky.feed.post/1": post(missing, wrong, hanging, huge)}))
    firehose.add(2, commit(2, NO_DOC, {"app.bsky.feed.post/2": post(orphan)}))
    captions = {"$type": "app.bsky.feed.post", "embed": {
        "video": blob(good, "video/mp4", 20),
        "captions": [{"lang": "en", "file": blob(cids.compute(b"vtt"), "text/vtt")}],
        "thumb": blob(cids.compute(b"big"), "image/png", 10**9)}}
    firehose.add(3, commit(3, DID, {"app.bsky.feed.post/3": captions}))

    wait_until(lambda: origin_status(origin_node.url, good) == 200, 15, "the good blob stored")
    wait_until(lambda: follower.health()["cursor"] == 3, 15, "every event handled")
    for cid in (missing, wrong, hanging, huge, orphan):
        assert origin_status(origin_node.url, cid) == 404, cid
    failed = "atcdn_ingest_blobs_failed_total"
    assert follower.metric(failed, reason="pds_refused") == 1
    assert follower.metric(failed, reason="cid_mismatch") == 1
    assert follower.metric(failed, reason="timeout") == 1
    assert follower.metric(failed, reason="oversized") == 1  # the body, not the claim
    assert follower.metric(failed, reason="no_pds") == 1
    skipped = "atcdn_ingest_blobs_skipped_total"
    assert follower.metric(skipped, reason="mime") == 1  # the captions file
    assert follower.metric(skipped, reason="too_large") == 1  # claimed 1 GB: never asked
    assert get_blobs(pds, wrong) == 1  # wrong bytes are not worth a retry
    assert get_blobs(pds, hanging) == 2  # a timeout is (retries=1)
    assert follower.alive()
    log = follower.tail()
    for reason in ("pds_refused", "cid_mismatch", "timeout", "no_pds"):
        assert log.count(f"({reason})") == 1, reason
    assert "Traceback" not in log


def test_error_frames_and_outdated_cursor(firehose: StandinFirehose, origin_node: Origin,
                                          pds: Upstream, tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    first, second, third = (pds.add_blob(bytes([n]) * 10) for n in range(3))
    follower = follow()
    firehose.add(5, frame("#info", {"name": "OutdatedCursor", "message": "too old"}))
    firehose.add(5, commit(5, DID, {"app.bsky.feed.post/1": post(first)}))
    wait_until(lambda: origin_status(origin_node.url, first) == 200, 10, "first stored")
    # An error frame ends the stream; the follower comes back where it was.
    firehose.add(6, error_frame("ConsumerTooSlow", "bye"), then_close=True)
    firehose.add(7, commit(7, DID, {"app.bsky.feed.post/2": post(second)}))
    wait_until(lambda: origin_status(origin_node.url, second) == 200, 10, "second stored")
    assert firehose.cursors[:2] == [None, 5]
    # FutureCursor: the server does not know our position; start from its live tail.
    firehose.add(8, error_frame("FutureCursor", "?"), then_close=True)
    wait_until(lambda: len(firehose.cursors) == 3 and follower.health()["connected"], 10,
               "subscribed again")
    firehose.add(9, commit(9, DID, {"app.bsky.feed.post/3": post(third)}))
    wait_until(lambda: origin_status(origin_node.url, third) == 200, 10, "third stored")
    assert firehose.cursors[2] is None
    assert follower.metric("atcdn_ingest_info_frames_total", name="OutdatedCursor") == 1
    assert follower.metric("atcdn_ingest_error_frames_total", error="ConsumerTooSlow") == 1
    assert follower.alive()


def test_a_slow_pds_gets_four_requests_and_memory_stays_bounded(
        firehose: StandinFirehose, origin_node: Origin, pds: Upstream, tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    (pds.root / "hang").mkdir()
    hanging = []
    for n in range(40):
        cid = pds.add_blob(b"slow %d" % n)
        (pds.root / "hang" / cid).touch()
        hanging.append(cid)
    follower = follow(ATCDN_INGEST_QUEUE_SIZE="5",
                      ATCDN_INGEST_READ_TIMEOUT="30", ATCDN_INGEST_FETCH_DEADLINE="30")
    for n, cid in enumerate(hanging, start=1):
        firehose.add(n, commit(n, DID, {f"app.bsky.feed.post/{n}": post(cid)}))

    time.sleep(3)
    assert sum(1 for line in pds.requests() if "getBlob" in line) == 4
    health = follower.health()
    assert health["queueDepth"] <= 5
    # Reading paused: the worker pool (16) and the queue (5) bound what was read.
    assert health["received"] is not None and health["received"] <= 4 + 16 + 5 + 1
    assert health["cursor"] == 0  # nothing finished, nothing claimed (0: before event 1)


def test_identity_event_drops_the_cached_document(firehose: StandinFirehose, origin_node: Origin,
                                                  pds: Upstream, tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    """The account moves to another PDS: without #identity the cached document (fresh for
    an hour) would still send getBlob to the old one, which lacks the new blob."""
    before = pds.add_blob(b"posted on the first PDS")
    follower = follow()
    firehose.add(1, commit(1, DID, {"app.bsky.feed.post/1": post(before)}))
    wait_until(lambda: origin_status(origin_node.url, before) == 200, 10, "first stored")

    new_home = start_upstream(tmp_path / "second-pds")
    try:
        after = new_home.add_blob(b"posted after moving")
        pds.add_did(DID, new_home.url)  # the PLC (the first stand-in) now names the new PDS
        firehose.add(2, frame("#identity", {"seq": 2, "did": DID, "time": "2026-01-01T00:00:01Z"}))
        firehose.add(3, commit(3, DID, {"app.bsky.feed.post/2": post(after)}))
        wait_until(lambda: origin_status(origin_node.url, after) == 200, 10, "moved blob stored")
        assert any("getBlob" in line for line in new_home.requests())
    finally:
        new_home.proc.stop()
    assert follower.metric("atcdn_ingest_events_total", kind="identity") == 1


def test_a_wrong_origin_token_stops_without_losing_the_position(
        firehose: StandinFirehose, origin_node: Origin, pds: Upstream, tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    first, second = pds.add_blob(b"stored with the right token"), pds.add_blob(b"and this")
    follower = follow()
    firehose.add(1, commit(1, DID, {"app.bsky.feed.post/1": post(first)}))
    wait_until(lambda: follower.health()["cursor"] == 1, 10, "first handled")
    follower.stop()

    follower.env["ATCDN_ORIGIN_TOKEN"] = "wrong"
    follower.start(wait_subscribed=False)
    firehose.add(2, commit(2, DID, {"app.bsky.feed.post/2": post(second)}))
    assert follower.proc is not None
    assert follower.proc.popen.wait(30) != 0
    assert "401" in follower.tail() and "Traceback" not in follower.tail()

    follower.env["ATCDN_ORIGIN_TOKEN"] = TOKEN
    follower.start()
    wait_until(lambda: origin_status(origin_node.url, second) == 200, 10,
               "the blob the wrong token could not store")
    assert firehose.cursors[-1] == 1  # resumed after the last event fully handled


def test_a_first_start_saves_its_position_before_the_first_event(
        firehose: StandinFirehose, origin_node: Origin, pds: Upstream, tmp_path: Path,
        follow: Callable[..., Follower]) -> None:
    """Killed while its very first event is in flight (nothing flushed yet), the follower
    resumes just before that event, not at the live tail."""
    (pds.root / "hang").mkdir()
    cid = pds.add_blob(b"slow to come")
    (pds.root / "hang" / cid).touch()
    follower = follow(ATCDN_INGEST_READ_TIMEOUT="30",
                      ATCDN_INGEST_FETCH_DEADLINE="30")
    firehose.add(10, commit(10, DID, {"app.bsky.feed.post/1": post(cid)}))
    wait_until(lambda: follower.health()["received"] == 10, 10, "the event is in flight")
    follower.kill()
    follower.start()
    wait_until(lambda: len(firehose.cursors) == 2, 10, "subscribed again")
    assert firehose.cursors[1] == 9
