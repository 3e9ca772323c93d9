"""Takedowns without AWS: an origin and two real edges following the origin's own feed,
and the edge half of issue 9's hole 2 (naming another DID, per-DID purges, work in
flight). No moto: the origin's ``/admin/feed`` is the transport (docs/authorization.md).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.edge.cache import DiskTier
from atcdn.edge.gate import Purges
from atcdn.edge.takedown import purge_disk
from PIL import Image

from tests.helpers.env import ADMIN_TOKEN, TOKEN
from tests.helpers.nodes import Edge, Origin, running_origin, start_edge, start_upstream

AUTH = {"Authorization": f"Bearer {TOKEN}"}  # origin writes; the edges' purge token
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # origin takedown and restore
A = "did:plc:" + "a" * 24
B = "did:plc:" + "b" * 24
BOUND = 30.0  # issue 12: a takedown at the origin reaches every edge within 30 s


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (seed * 40 % 256, 90, 160)).save(out, "JPEG", quality=80)
    return out.getvalue()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Origin, list[Edge]]]:
    """One origin, two edges on the default transport (the origin's feed) and the
    default poll interval; no PDS fallback, so the origin alone decides."""
    with running_origin(tmp_path) as origin:
        edges: list[Edge] = []
        try:
            for n in range(2):
                edges.append(start_edge(origin.url, tmp_path / f"edge{n}",
                                        tmp_path / f"edge{n}.log", workers=2,
                                        env={"ATCDN_PDS_FALLBACK": "0"}))
            yield origin, edges
        finally:
            for edge in edges:
                edge.proc.stop()


def push(origin: Origin, data: bytes, did: str) -> str:
    r = httpx.put(f"{origin.url}/blob/{compute(data)}", params={"did": did}, content=data,
                  headers=AUTH)
    assert r.status_code in (200, 201), r.text
    return compute(data)


def until(status: int, url: str) -> float:
    """Seconds until ``url`` answers ``status`` (fails after BOUND)."""
    started = time.monotonic()
    while (code := httpx.get(url, timeout=30).status_code) != status:
        assert time.monotonic() - started < BOUND, f"{url}: still {code} after {BOUND}s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_origin_takedown_reaches_every_edge_and_restore_brings_it_back(fleet) -> None:
    origin, edges = fleet
    cid = push(origin, jpeg(1), A)
    image = "/img/avatar/plain/{did}/" + cid + "@jpeg"
    for edge in edges:
        for _ in range(2):  # the second answer comes from the edge's caches
            assert httpx.get(edge.url + image.format(did=A), timeout=30).status_code == 200

    down = httpx.post(f"{origin.url}/admin/takedown", json={"did": A}, headers=ADMIN).json()
    assert down["scope"] == "did" and down["seq"] >= 1
    for edge in edges:
        until(451, edge.url + image.format(did=A))
        # Hole 2 at the edge: naming a DID that does not hold the blob does not lift it.
        assert httpx.get(f"{edge.url}/blob/{B}/{cid}", timeout=30).status_code == 404
        assert httpx.get(edge.url + image.format(did=B), timeout=30).status_code == 404

    httpx.post(f"{origin.url}/admin/restore", json={"did": A}, headers=ADMIN).raise_for_status()
    for edge in edges:
        until(200, edge.url + image.format(did=A))
        # Operators see how far behind the feed each edge is (a poll interval, here).
        assert "atcdn_takedown_feed_lag_seconds" in httpx.get(edge.url + "/metrics").text
        assert 0 <= edge.metric("atcdn_takedown_feed_lag_seconds") < BOUND


def test_edge_account_takedown_is_per_repo(fleet) -> None:
    origin, (edge, _) = fleet
    data = jpeg(2)
    cid = push(origin, data, A)
    assert httpx.get(f"{edge.url}/blob/{A}/{cid}", timeout=30).status_code == 200
    r = httpx.post(f"{edge.url}/admin/takedown", json={"did": A, "reason": "test"},
                   headers=AUTH)
    answer = r.json()
    assert r.status_code == 200 and answer["scope"] == "did" and answer["purged"] >= 1
    assert set(answer) == {"action", "scope", "did", "cid", "reason", "changed", "purged"}
    assert httpx.get(f"{edge.url}/blob/{A}/{cid}").status_code == 451
    assert httpx.get(f"{edge.url}/blob/{B}/{cid}", timeout=30).status_code == 404
    # B genuinely holds the same bytes: B's copy is served (Bluesky's per-repo semantics).
    push(origin, data, B)
    assert httpx.get(f"{edge.url}/blob/{B}/{cid}", timeout=30).content == data
    assert httpx.get(f"{edge.url}/blob/{A}/{cid}").status_code == 451
    # One repo's blob: blocked under B only.
    pair = httpx.post(f"{edge.url}/admin/takedown", json={"did": B, "cid": cid},
                      headers=AUTH).json()
    assert pair["scope"] == "did+cid"
    assert httpx.get(f"{edge.url}/blob/{B}/{cid}").status_code == 451
    restored = httpx.post(f"{edge.url}/admin/restore", json={"did": A}, headers=AUTH).json()
    assert restored["action"] == "restore" and restored["changed"] is True
    assert httpx.get(f"{edge.url}/blob/{A}/{cid}", timeout=30).content == data


def test_per_did_purge_survives_cache_eviction(tmp_path: Path) -> None:
    """The DID -> CIDs record used to live in the evictable cache: once evicted, a purge
    by DID missed renditions that were still cached (kept hot by hits)."""
    disk = DiskTier(tmp_path / "disk", 400_000, 1 << 20)
    purges = Purges(tmp_path / "purges")
    try:
        victim = compute(b"victim")
        disk.remember_owner(A, victim)
        disk.put_bytes(f"img/{victim}/avatar/jpeg", os.urandom(20_000), victim)
        for n in range(200):  # 4 MB through a 400 KB cache; the rendition stays hot
            other = compute(str(n).encode())
            disk.put_bytes(f"src/{other}", os.urandom(20_000), other)
            disk.remember_owner(B, other)
            assert disk.get(f"img/{victim}/avatar/jpeg") is not None
        assert purge_disk(disk, tmp_path / "video", purges, did=A) >= 1
        assert disk.get(f"img/{victim}/avatar/jpeg") is None
    finally:
        disk.close()


def test_a_fetch_in_flight_does_not_land_after_a_takedown(tmp_path: Path, edge_factory) -> None:
    """A takedown (or purge) that arrives while the edge is fetching: the fetched bytes are
    neither served nor cached; after a restore they are fetched again."""
    up = start_upstream(tmp_path / "upstream", env={"STANDIN_DELAY": "2"})
    try:
        cid = up.add_blob(jpeg(3))
        edge = edge_factory(up.url, workers=2, env={"ATCDN_EDGE_TAKEDOWN_SOURCE": "none"})
        url = f"{edge.url}/blob/{A}/{cid}"
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(httpx.get, url, timeout=30)
            time.sleep(1.0)  # the fetch is waiting on the slow origin
            httpx.post(f"{edge.url}/admin/takedown", json={"did": A},
                       headers=AUTH).raise_for_status()
            assert slow.result().status_code == 451
        httpx.post(f"{edge.url}/admin/restore", json={"did": A}, headers=AUTH).raise_for_status()
        assert httpx.get(url, timeout=30).status_code == 200
        assert sum(1 for line in up.requests() if f"GET /blob/{cid}" in line) == 2
        # A plain purge in flight: the answer may go out, but nothing stale stays cached.
        with ThreadPoolExecutor(1) as pool:
            other = up.add_blob(jpeg(4))
            slow = pool.submit(httpx.get, f"{edge.url}/blob/{A}/{other}", timeout=30)
            time.sleep(1.0)
            httpx.post(f"{edge.url}/admin/purge", json={"cid": other},
                       headers=AUTH).raise_for_status()
            assert slow.result().status_code in (200, 503)
        assert httpx.get(f"{edge.url}/blob/{A}/{other}", timeout=30).status_code == 200
        assert sum(1 for line in up.requests() if f"GET /blob/{other}" in line) == 2
    finally:
        up.proc.stop()


def test_holders_are_pruned_of_cids_no_longer_cached(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from atcdn.edge.cache import Holders

    monkeypatch.setattr(Holders, "PRUNE_EVERY", 11)  # the last add prunes
    disk = DiskTier(tmp_path / "disk", 10_000_000, 1 << 20)
    try:
        kept = compute(b"kept")
        disk.put_bytes(f"src/{kept}", b"kept", kept)
        disk.remember_owner(A, kept)
        for n in range(10):  # ten pairs whose CIDs were never (or no longer) cached
            disk.remember_owner(B, compute(str(n).encode()))
        assert disk.cids_of(B) == ()
        assert disk.cids_of(A) == (kept,)
    finally:
        disk.close()
