"""``atcdn ingest labels`` against the REAL reference moderation service: Ozone, with PLC,
PDS, AppView and bsync, assembled by ``@atproto/dev-env`` (tests/ozone/harness.js) on a
throwaway PostgreSQL. A moderator's record takedown in Ozone makes the post's image
unavailable (451) on every edge within 30 s, its reversal brings it back, and an account
takedown (or a suspension, labelled ``!suspend``) takes all the account's blobs down.

Real processes: the whole reference network, the origin, the edge, ``atcdn ingest
follow`` on the PDS's firehose (it fills the record index the label follower reads),
``atcdn ingest labels`` on Ozone's subscribeLabels, moto_server (the AWS stand-in
carrying the takedown feed to the edge). No stand-in speaks for Ozone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core import cid as cids

from tests.helpers.ingest import Follower, origin_status, wait_until
from tests.helpers.labeler import LabelFollower, jpeg, push, takedown_feed
from tests.helpers.nodes import Origin, start_edge
from tests.helpers.ozone import Moderation, reference_moderation

pytestmark = pytest.mark.timeout(1500)  # the first run installs tests/ozone (minutes)

WITHIN = 30.0  # the promise: every edge stops serving within 30 s


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Moderation, bytes]]:
    tmp = tmp_path_factory.mktemp("ozone")
    data = jpeg(7, (320, 240))
    (tmp / "image.jpg").write_bytes(data)
    started = time.monotonic()
    with reference_moderation(tmp, tmp / "image.jpg") as moderation:
        print(f"reference network up in {time.monotonic() - started:.1f}s "
              f"(harness: {moderation.startSeconds:.1f}s)")
        yield moderation, data


def test_ozone_takedowns_reach_every_edge(network: tuple[Moderation, bytes], tmp_path: Path,
                                        moto: dict[str, str]) -> None:
    net, data = network
    did, blob = net.did, net.blobCid
    assert cids.compute(data) == blob  # the PDS keeps the uploaded bytes as they are
    feed = takedown_feed(moto)
    origin = Origin(tmp_path / "origin", feed, tmp_path / "origin.log")
    origin.start()
    edges = [start_edge(origin.url, tmp_path / f"edge{n}", tmp_path / f"edge{n}.log",
                        env={**feed, "ATCDN_PDS_FALLBACK": "0"}) for n in (1, 2)]
    data_dir = tmp_path / "ingest"
    common = {**feed, "ATCDN_INGEST_PUBLISH_FEED": "1"}
    # The firehose follower fills the record index (and would fetch the blob itself);
    # the post was made before it started, so it replays the PDS's firehose from 0.
    follower = Follower(net.pdsUrl.replace("http", "ws", 1), origin.url, data_dir,
                        plc_url=net.plcUrl, env=common)
    labels = LabelFollower(net.ozoneUrl.replace("http", "ws", 1), net.ozoneDid, origin.url,
                           data_dir, plc_url=net.plcUrl, env=common)
    try:
        assert push(origin.url, did, data) == blob
        other = push(origin.url, did, jpeg(8))  # another blob of the account (not in the post)
        image = [f"{e.url}/img/feed_thumbnail/plain/{did}/{blob}@jpeg" for e in edges]
        raw = [f"{e.url}/blob/{did}/{blob}" for e in edges]
        others = [f"{e.url}/blob/{did}/{other}" for e in edges]

        def every(urls: list[str], status: int) -> bool:
            return all(httpx.get(url, timeout=30).status_code == status for url in urls)

        assert every(image + raw + others, 200)  # now cached on both edges

        # Cursor 0: the follower replays the PDS's whole firehose, this post included.
        _set_firehose_cursor(data_dir, follower.source, 0)
        follower.start()
        labels.start()

        # 1. A record takedown by a moderator in Ozone.
        net.command("takedown-record")
        took = wait_until(lambda: every(image + raw, 451), WITHIN,
                          "the post's image refused on every edge after Ozone's takedown")
        assert every(others, 200)  # the record's blobs only
        assert origin_status(origin.url, blob, did) == 451
        print(f"record takedown -> edge 451 in {took:.1f}s")
        assert labels.metric("atcdn_ingest_labels_total", outcome="applied") >= 1
        assert labels.metric("atcdn_ingest_labels_total", outcome="bad_signature") == 0

        # 2. Its reversal.
        net.command("reverse-record")
        back = wait_until(lambda: every(image + raw, 200), WITHIN,
                          "the image served again after the reversal")
        assert origin_status(origin.url, blob, did) == 200
        print(f"reversal -> edge 200 in {back:.1f}s")

        # 3. An account takedown: every blob of the account.
        net.command("takedown-account")
        took = wait_until(lambda: every(image + raw + others, 451), WITHIN,
                          "the account's blobs refused on every edge after the takedown")
        assert origin_status(origin.url, other, did) == 451
        assert labels.health()["actions"].get("account_takedown") == 1  # by the label
        print(f"account takedown -> edge 451 in {took:.1f}s")

        net.command("reverse-account")
        wait_until(lambda: every(image + raw + others, 200), WITHIN,
                   "the account's blobs served again after the reversal")

        # 4. A suspension (a takedown for 24 h): Ozone labels the DID !suspend.
        net.command("suspend-account")
        wait_until(lambda: every(image + raw + others, 451), WITHIN,
                   "the account's blobs refused on every edge after a suspension")
        assert labels.health()["actions"].get("account_takedown") == 2
        net.command("reverse-account")
        wait_until(lambda: every(image + raw + others, 200), WITHIN,
                   "the account's blobs served again after the suspension is lifted")
    finally:
        print(labels.tail())
        labels.stop()
        follower.stop()
        for edge in edges:
            edge.proc.stop()
        origin.stop()


def _set_firehose_cursor(data_dir: Path, source: str, seq: int) -> None:
    from atcdn.ingest.state import State

    state = State(data_dir)
    try:
        state.save_cursor(source, seq)
    finally:
        state.close()
