"""``atcdn ingest labels`` against a STAND-IN labeler: good labels act at the origin (and
through the AWS takedown feed on an edge), bad signatures, foreign sources, malformed
frames and ``#info`` are counted and ignored, a label that comes before its record waits
for it, ``neg`` and expiry restore, and a kill -9 resumes from the saved cursor.

Real processes: the origin, the edge, the label follower, moto_server (the AWS stand-in).
Stand-ins: the labeler's websocket (tests/helpers/firehose.StandinFirehose replaying our
frames, signed like Ozone signs them: tests/helpers/labeler.py) and its DID document
(a static file server as the PLC). The record index is written directly, as the firehose
follower (``ingest follow``) would. The real labeler, Ozone: tests/test_labels_ozone.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.ingest.records import RecordIndex

from tests.helpers.env import ADMIN_TOKEN
from tests.helpers.firehose import StandinFirehose
from tests.helpers.ingest import origin_status, wait_until
from tests.helpers.labeler import (
    LabelFollower,
    Signer,
    info_frame,
    jpeg,
    labels_frame,
    now_iso,
    push,
    takedown_feed,
)
from tests.helpers.nodes import Origin, start_edge
from tests.helpers.servers import static_server

LABELER = "did:plc:labelerlabelerlabelerlab"
ALICE = "did:plc:aliceaaaaaaaaaaaaaaaaaaa"
BOB = "did:plc:bobbbbbbbbbbbbbbbbbbbbbb"
CAROL = "did:plc:carolccccccccccccccccccc"
DAVE = "did:plc:davedddddddddddddddddddd"
POST_A = f"at://{ALICE}/app.bsky.feed.post/3kaaa"
POST_B = f"at://{ALICE}/app.bsky.feed.post/3kbbb"
POST_C = f"at://{CAROL}/app.bsky.feed.post/3kccc"
WITHIN = 15.0  # seconds; the feed is polled every 0.5 s here (30 s is the promise)



@pytest.fixture
def world(tmp_path: Path, moto: dict[str, str]) -> Iterator[dict]:
    feed = takedown_feed(moto)
    origin = Origin(tmp_path / "origin", feed, tmp_path / "origin.log")
    origin.start()
    edge = start_edge(origin.url, tmp_path / "edge", tmp_path / "edge.log",
                      env={**feed, "ATCDN_PDS_FALLBACK": "0"})
    signer = Signer()
    plc = tmp_path / "plc"
    plc.mkdir()
    (plc / LABELER).write_text(json.dumps(signer.did_document(LABELER)))
    try:
        with static_server(plc) as plc_url, StandinFirehose().running() as labeler:
            yield {"origin": origin, "edge": edge, "signer": signer, "plc_url": plc_url,
                   "labeler": labeler, "feed": feed, "tmp": tmp_path}
    finally:
        edge.proc.stop()
        origin.stop()



def test_labels_from_a_standin_labeler(world: dict) -> None:
    origin, edge, signer, stream = (world["origin"], world["edge"], world["signer"],
                                    world["labeler"])
    data_dir = world["tmp"] / "ingest"
    a1, a2, b1 = (push(origin.url, ALICE, jpeg(n)) for n in (1, 2, 3))
    bob1, c1 = push(origin.url, BOB, jpeg(4)), push(origin.url, CAROL, jpeg(5))
    dave1 = push(origin.url, DAVE, jpeg(6))
    r = httpx.post(f"{origin.url}/admin/takedown", json={"did": DAVE},  # an operator's own
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    index = RecordIndex(data_dir)  # what `ingest follow` writes
    index.put(POST_A, ALICE, [a1, a2])
    index.put(POST_C, CAROL, [c1])
    image = f"{edge.url}/img/feed_thumbnail/plain/{ALICE}/{a1}@jpeg"
    assert httpx.get(image, timeout=30).status_code == 200  # cached on the edge

    sign = signer.label
    stream.add(1, labels_frame(1, sign(LABELER, POST_A)))
    stream.add(2, b"\x00" * 100_000)  # over the frame limit: the connection closes (1009)
    stream.add(3, b"\xff\xfe not cbor")
    stream.add(4, "a text frame")
    stream.add(5, info_frame("OutdatedCursor", "stand-in says hello"))
    stream.add(6, labels_frame(6, sign(LABELER, POST_C, tamper=True),  # bad signature
                               sign(LABELER, CAROL, high_s=True),  # malleated: refused
                               Signer().label(LABELER, CAROL),  # another key
                               sign("did:plc:otherlabelerotherlabeler", CAROL),  # foreign
                               {"src": LABELER, "uri": CAROL}))  # malformed
    stream.add(7, labels_frame(7, sign(LABELER, BOB)))  # an account
    stream.add(8, labels_frame(8, sign(LABELER, POST_B),  # before its record
                               sign(LABELER, DAVE)))  # down already, by the operator
    stream.add(9, labels_frame(9, sign(LABELER, POST_C, "porn"),  # a value that does not act
                               sign(LABELER, CAROL, exp=now_iso(-60))))  # expired
    follower = LabelFollower(stream.url, LABELER, origin.url, data_dir,
                             plc_url=world["plc_url"],
                             env={**world["feed"], "ATCDN_INGEST_PUBLISH_FEED": "1",
                                  "ATCDN_INGEST_MAX_FRAME_BYTES": "65536"}).start()
    try:
        wait_until(lambda: follower.health()["cursor"] == 9, WITHIN, "cursor at 9")
        for cid in (a1, a2):
            assert origin_status(origin.url, cid, ALICE) == 451
        assert origin_status(origin.url, bob1, BOB) == 451
        assert origin_status(origin.url, c1, CAROL) == 200  # bad, foreign, expired, other
        assert origin_status(origin.url, b1, ALICE) == 200  # pending: no record yet
        wait_until(lambda: httpx.get(image, timeout=30).status_code == 451, WITHIN,
                   "the edge refuses the labelled post's image")
        assert follower.metric("atcdn_ingest_labels_total", outcome="bad_signature") == 3
        assert follower.metric("atcdn_ingest_labels_total", outcome="foreign_source") == 1
        assert follower.metric("atcdn_ingest_labels_total", outcome="bad_label") == 1
        assert follower.metric("atcdn_ingest_labels_total", outcome="other_value") == 1
        assert follower.metric("atcdn_ingest_label_malformed_frames_total") == 3
        assert follower.metric("atcdn_ingest_label_info_frames_total") == 1

        index.put(POST_B, ALICE, [b1])  # the record arrives: the waiting label applies
        wait_until(lambda: origin_status(origin.url, b1, ALICE) == 451, WITHIN,
                   "pending label applied once its record is indexed")

        follower.kill()  # kill -9; the reversals arrive while it is down
        stream.add(10, labels_frame(10, sign(LABELER, POST_A, neg=True)))
        stream.add(11, labels_frame(11, sign(LABELER, BOB, neg=True),
                                    sign(LABELER, DAVE, neg=True)))
        follower.start()
        wait_until(lambda: follower.health()["cursor"] == 11, WITHIN, "cursor at 11")
        assert stream.cursors[-1] == 9  # resumed where it was, nothing replayed twice
        for cid in (a1, a2):
            assert origin_status(origin.url, cid, ALICE) == 200
        assert origin_status(origin.url, bob1, BOB) == 200
        assert origin_status(origin.url, b1, ALICE) == 451  # its label still holds
        assert origin_status(origin.url, dave1, DAVE) == 451  # not ours to lift
        wait_until(lambda: httpx.get(image, timeout=30).status_code == 200, WITHIN,
                   "the edge serves the image again after neg")
    finally:
        print(follower.tail())
        follower.stop()
        index.close()
