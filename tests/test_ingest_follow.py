"""``atcdn ingest follow`` against the reference PDS's own subscribeRepos: new media reaches
the origin before anyone asks, a kill -9 loses nothing, the network's account takedowns
apply at the origin.

The PDS (tests/pds/harness.js, 0.4 line, with its own PLC) and one origin run for the
module; each test starts its own follower process and its own account.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.ingest.records import RecordIndex

from tests.helpers.clips import make_clip
from tests.helpers.env import ADMIN_TOKEN, ROOT
from tests.helpers.ingest import Follower, origin_status, wait_until
from tests.helpers.nodes import Origin, start_edge
from tests.helpers.pds import ReferencePDS
from tests.helpers.pictures import encode, marked
from tests.helpers.servers import atcdn

pytestmark = pytest.mark.timeout(900)  # the first run installs tests/pds (minutes)

STORED_WITHIN = 5.0


@pytest.fixture(scope="module")
def origin(module_origin: Origin) -> Origin:
    return module_origin


@pytest.fixture
def follower(pds: ReferencePDS, origin: Origin, tmp_path: Path) -> Iterator[Follower]:
    node = Follower(pds.ws_url, origin.url, tmp_path / "ingest", plc_url=pds.plc_url)
    try:
        yield node.start()
    finally:
        node.stop()


def image(seed: int, fmt: str = "JPEG") -> bytes:
    """A small picture no other test uploads."""
    return encode(marked(64 + seed, 48 + seed), fmt)


def stored(origin: Origin, *cids: str, timeout: float = STORED_WITHIN) -> float:
    return wait_until(lambda: all(origin_status(origin.url, c) == 200 for c in cids), timeout,
                      f"{cids} stored at the origin")


def test_new_media_is_stored_within_5s(pds: ReferencePDS, origin: Origin, follower: Follower,
                                       tmp_path: Path) -> None:
    user = pds.create_account("carolyn.test")
    video = make_clip(tmp_path / "clip.mp4", width=160, height=96, seconds=1.0, audio=False)

    images_uri, image_cids = user.post_images(image(1), image(2))
    video_uri, video_cid = user.post_video(video.read_bytes())
    avatar_cid = user.set_avatar(image(3, "PNG"))
    cids = [*image_cids, video_cid, avatar_cid]
    for cid in cids:
        assert origin_status(origin.url, cid) in (200, 404)
    stored(origin, *cids)

    res = httpx.get(f"{origin.url}/blob/{video_cid}")
    assert res.content == video.read_bytes() and res.headers["content-type"] == "video/mp4"
    # Fetched once each from the PDS, no client request involved.
    fetched = Counter(entry["cid"] for entry in pds.get_blob_log())
    assert all(fetched[cid] == 1 for cid in cids), fetched
    assert follower.metric("atcdn_ingest_blobs_stored_total") >= 4

    index = RecordIndex(follower.data_dir)
    assert index.blobs_of(images_uri) == (user.did, image_cids)
    assert index.blobs_of(video_uri) == (user.did, [video_cid])
    assert index.blobs_of(f"at://{user.did}/app.bsky.actor.profile/self") == (user.did,
                                                                             [avatar_cid])
    user.delete(images_uri)
    wait_until(lambda: index.blobs_of(images_uri) is None, STORED_WITHIN,
               "a deleted record leaves the index")
    assert follower.health()["connected"] is True


def test_kill_9_loses_nothing(pds: ReferencePDS, origin: Origin, follower: Follower) -> None:
    user = pds.create_account("davidson.test")
    _, first = user.post_images(image(10))
    stored(origin, *first)

    # Killed between posts: these two are made while nothing follows.
    follower.kill()
    _, while_down = user.post_images(image(11), image(12))
    _, also_down = user.post_images(image(13))
    follower.start()
    stored(origin, *while_down, *also_down, timeout=15)  # a restart and a replay first

    # Killed at once after a post, most likely with its blob in flight.
    _, in_flight = user.post_images(image(14))
    follower.kill()
    follower.start()
    stored(origin, *in_flight, timeout=15)

    # Nothing visible happened twice: each blob was fetched from the PDS once.
    fetched = Counter(entry["cid"] for entry in pds.get_blob_log())
    for cid in (*first, *while_down, *also_down):
        assert fetched[cid] == 1, (cid, fetched[cid])
    assert fetched[in_flight[0]] <= 2  # a download cut by the kill is the only repeat

    wait_until(lambda: follower.health()["eventsInFlight"] == 0, 5, "all handled")
    status = subprocess.run(atcdn("ingest", "status", "--data-dir", str(follower.data_dir),
                                  "--url", follower.url), cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["follower"]["connected"] is True
    (saved,) = report["cursors"]
    assert saved["source"] == pds.ws_url and saved["seq"] <= report["follower"]["cursor"]


def test_account_takedown_and_reactivation(pds: ReferencePDS, origin: Origin,
                                           follower: Follower) -> None:
    user = pds.create_account("erinmoss.test")
    _, (cid,) = user.post_images(image(20))
    stored(origin, cid)

    pds.take_down_account(user.did)
    took = wait_until(lambda: origin_status(origin.url, cid, user.did) == 451, 30,
                      "the account's blob is withheld")
    assert took < 5
    assert origin_status(origin.url, cid) == 451  # its only holder is down

    pds.take_down_account(user.did, applied=False)
    wait_until(lambda: origin_status(origin.url, cid, user.did) == 200, 30,
               "the account's blob is served again")
    assert follower.metric("atcdn_ingest_account_actions_total", action="takedown") == 1
    assert follower.metric("atcdn_ingest_account_actions_total", action="restore") == 1


def test_an_operators_takedown_outlives_reactivation(pds: ReferencePDS, origin: Origin,
                                                    follower: Follower) -> None:
    user = pds.create_account("franklin.test")
    _, (cid,) = user.post_images(image(30))
    stored(origin, cid)
    res = httpx.post(f"{origin.url}/admin/takedown", json={"did": user.did},
                     headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert res.status_code == 200

    pds.take_down_account(user.did)
    wait_until(lambda: follower.metric("atcdn_ingest_account_actions_total",
                                       action="takedown") == 1, 10, "the #account is seen")
    seen = follower.metric("atcdn_ingest_events_total", kind="account")
    pds.take_down_account(user.did, applied=False)
    wait_until(lambda: follower.metric("atcdn_ingest_events_total", kind="account") == seen + 1
               and follower.health()["eventsInFlight"] == 0, 10, "the reactivation is seen")
    assert origin_status(origin.url, cid, user.did) == 451
    assert follower.metric("atcdn_ingest_account_actions_total", action="restore") == 0


def test_account_takedown_reaches_every_edge_through_the_feed(
        pds: ReferencePDS, origin: Origin, moto: dict[str, str], tmp_path: Path) -> None:
    """With ATCDN_INGEST_PUBLISH_FEED, the #account also goes on the AWS takedown feed
    (moto_server), which edges follow: even an image an edge has cached goes 451."""
    feed = {**moto, "ATCDN_TAKEDOWN_TABLE": f"atcdn-takedowns-{uuid.uuid4().hex}"}
    done = subprocess.run(atcdn("control", "init-feed"), env={**os.environ, **feed}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    edges = [start_edge(origin.url, tmp_path / f"edge{n}", tmp_path / f"edge{n}.log",
                        env={**feed, "ATCDN_TAKEDOWN_FOLLOW": "1",
                             "ATCDN_TAKEDOWN_POLL_INTERVAL": "1", "ATCDN_PDS_FALLBACK": "0"})
             for n in range(2)]
    follower = Follower(pds.ws_url, origin.url, tmp_path / "ingest", plc_url=pds.plc_url,
                        env={**feed, "ATCDN_INGEST_PUBLISH_FEED": "1"}).start()
    try:
        user = pds.create_account("gloriaedge.test")
        _, (cid,) = user.post_images(image(40))
        stored(origin, cid)
        urls = [f"{edge.url}/img/feed_thumbnail/plain/{user.did}/{cid}@jpeg" for edge in edges]
        assert all(httpx.get(url, timeout=30).status_code == 200 for url in urls)  # cached

        pds.take_down_account(user.did)
        took = wait_until(lambda: all(httpx.get(u, timeout=30).status_code == 451
                                      for u in urls), 30, "every edge withholds the image")
        assert took < 30
        pds.take_down_account(user.did, applied=False)
        wait_until(lambda: all(httpx.get(u, timeout=30).status_code == 200 for u in urls), 30,
                   "every edge serves it again")
    finally:
        follower.stop()
        for edge in edges:
            edge.proc.stop()
