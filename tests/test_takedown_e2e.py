"""A takedown published to the AWS feed (moto_server) reaches a real origin and a real edge.

Origin, edge and moto_server run as real processes; the takedown is published with the
``atcdn control`` CLI (real boto3 calls over HTTP). The followers poll every 0.5 s here,
so the bound waited for (``DELAY``) is generous and still well under the 30 s default.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core import cid as cids
from PIL import Image

from tests.helpers.env import ROOT, TOKEN
from tests.helpers.nodes import Edge, Origin, start_edge
from tests.helpers.servers import atcdn

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
POLL = "0.5"
DELAY = 15.0  # seconds a published event may take to be applied (poll + apply + slack)


def jpeg(seed: int) -> bytes:
    image = Image.new("RGB", (640, 480), (seed * 40 % 256, 90, 160))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, comment=f"seed {seed}".encode())
    return out.getvalue()


class Node:
    """Origin + edge following the feed, and the CLI to publish to it."""

    def __init__(self, tmp: Path, aws: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = {**aws, "ATCDN_TAKEDOWN_FOLLOW": "1", "ATCDN_TAKEDOWN_POLL_INTERVAL": POLL,
                    # A feed per test: a new node replays its whole feed, and another
                    # test's account takedown must not be part of it.
                    "ATCDN_TAKEDOWN_TABLE": f"atcdn-takedowns-{uuid.uuid4().hex}"}
        self.control("init-feed")
        self.origin = Origin(tmp / "origin", self.env, tmp / "origin.log")
        self.origin.start()
        self.edge = self.start_edge()

    def start_edge(self, **env: str) -> Edge:
        return start_edge(self.origin.url, self.tmp / "edge", self.tmp / "edge.log", workers=2,
                          env={**self.env, "ATCDN_PDS_FALLBACK": "0", **env})

    def control(self, *args: str) -> str:
        done = subprocess.run(atcdn("control", *args), env={**os.environ, **self.env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def put(self, data: bytes) -> str:
        cid = cids.compute(data)
        r = httpx.put(f"{self.origin.url}/blob/{cid}", params={"did": DID}, content=data,
                      headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code in (200, 201), r.text
        return cid

    def image(self, cid: str, preset: str = "feed_thumbnail") -> httpx.Response:
        return httpx.get(f"{self.edge.url}/img/{preset}/plain/{DID}/{cid}@jpeg", timeout=30)

    def stop(self) -> None:
        self.edge.proc.stop()
        self.origin.stop()


@pytest.fixture
def node(tmp_path: Path, moto: dict[str, str]) -> Iterator[Node]:
    n = Node(tmp_path, moto)
    try:
        yield n
    finally:
        n.stop()


def wait_for(status: int, get, what: str) -> float:
    """Poll until ``get()`` answers ``status``; seconds it took (fails after DELAY)."""
    started = time.monotonic()
    while True:
        r = get()
        if r.status_code == status:
            return time.monotonic() - started
        assert time.monotonic() - started < DELAY, f"{what}: still {r.status_code} after {DELAY}s"
        time.sleep(0.1)


def test_takedown_reaches_a_cached_image_and_restore_brings_it_back(node: Node) -> None:
    cid = node.put(jpeg(1))
    first = node.image(cid)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert node.image(cid).status_code == 200  # now in the edge's caches
    assert node.edge.metric("atcdn_edge_origin_fetches_total") == 1

    node.control("takedown", "--cid", cid, "--reason", "e2e")
    wait_for(451, lambda: node.image(cid), "edge image after takedown")
    # Every worker, every route, every preset: nothing comes back through a cache...
    for _ in range(6):
        blocked = node.image(cid)
        assert blocked.status_code == 451 and blocked.json()["error"] == "TakenDown"
    assert httpx.get(f"{node.edge.url}/blob/{DID}/{cid}").status_code == 451
    assert node.image(cid, "avatar").status_code == 451
    # ...and the origin refuses it too (the edge's PDS fallback is off: nowhere else to go).
    wait_for(451, lambda: httpx.get(f"{node.origin.url}/blob/{cid}"), "origin after takedown")
    fetches = node.edge.metric("atcdn_edge_origin_fetches_total")

    node.control("restore", "--cid", cid)
    wait_for(200, lambda: node.image(cid), "edge image after restore")
    assert httpx.get(f"{node.origin.url}/blob/{cid}").status_code == 200
    # The takedown purged the cached copies: the restored image was fetched again.
    assert node.edge.metric("atcdn_edge_origin_fetches_total") > fetches


def test_account_takedown_and_a_restarted_edge_misses_nothing(node: Node) -> None:
    cids_ = [node.put(jpeg(seed)) for seed in (2, 3)]
    assert all(node.image(c).status_code == 200 for c in cids_)

    # An event published while the edge is down is applied when it comes back.
    node.edge.proc.stop()
    node.control("takedown", "--did", DID)
    node.edge = node.start_edge()
    for c in cids_:
        wait_for(451, lambda c=c: node.image(c), "edge image after account takedown")
    events = [line for line in node.control("feed").splitlines() if line]
    assert len(events) >= 1 and '"did"' in events[-1]

    node.control("restore", "--did", DID)
    for c in cids_:
        wait_for(200, lambda c=c: node.image(c), "edge image after account restore")


def test_purge_endpoint_takes_img_paths(node: Node) -> None:
    cid = node.put(jpeg(4))
    assert node.image(cid).status_code == 200
    before = node.edge.metric("atcdn_edge_origin_fetches_total")
    path = {"paths": [f"/img/{DID}/{cid}"]}
    denied = httpx.post(f"{node.edge.url}/admin/purge", json=path)
    assert denied.status_code == 401
    done = httpx.post(f"{node.edge.url}/admin/purge", json=path,
                      headers={"Authorization": f"Bearer {TOKEN}"})
    assert done.status_code == 200 and done.json()["purged"] >= 1
    assert node.image(cid).status_code == 200  # purged, not taken down: fetched again
    assert node.edge.metric("atcdn_edge_origin_fetches_total") == before + 1


def test_an_edge_following_its_origin_sees_the_fleet_feed(node: Node) -> None:
    """The origin relays what it applies from the AWS feed into its own feed, so an edge
    that follows the origin (no AWS access of its own) sees fleet takedowns too."""
    node.edge.proc.stop()
    node.edge = node.start_edge(ATCDN_EDGE_TAKEDOWN_SOURCE="origin",
                                ATCDN_AWS_ENDPOINT_URL="http://127.0.0.1:9")  # no AWS here
    cid = node.put(jpeg(5))
    assert node.image(cid).status_code == 200
    node.control("takedown", "--did", DID)
    wait_for(451, lambda: node.image(cid), "edge image after a fleet takedown, via the origin")
    node.control("restore", "--did", DID)
    wait_for(200, lambda: node.image(cid), "edge image after the fleet restore")
