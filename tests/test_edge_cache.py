"""Caching behaviour of real edge processes: coalescing across workers, serving while the
origin is down, the disk tier across restarts, corrupt upstreams, takedowns and purges."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from atcdn.core.settings import EdgeSettings
from atcdn.edge.takedown import purge

from tests.helpers.env import TOKEN
from tests.helpers.nodes import Upstream, start_upstream
from tests.helpers.pictures import DID, herd, photo


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_herd_costs_one_fetch_and_one_transform(upstream: Upstream, edge_factory,
                                                server: str) -> None:
    cid = upstream.add_blob(photo())
    edge = edge_factory(upstream.url, workers=2, server=server)
    responses = asyncio.run(herd(f"{edge.url}/img/feed_thumbnail/plain/{DID}/{cid}@webp", 50))
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert edge.metric("atcdn_edge_origin_fetches_total") == 1
    assert edge.metric("atcdn_edge_transforms_total") == 1
    assert sum(1 for line in upstream.requests() if cid in line) == 1
    # The DID is not part of the cache key: the same CID under another account is a hit.
    other = f"{edge.url}/img/feed_thumbnail/plain/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/{cid}@webp"
    assert httpx.get(other, timeout=30).content == responses[0].content
    # A second preset of the same CID reuses the cached source: no new fetch.
    r = httpx.get(f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg", timeout=30)
    assert r.status_code == 200
    assert edge.metric("atcdn_edge_origin_fetches_total") == 1
    assert edge.metric("atcdn_edge_transforms_total") == 2


def test_cache_serves_while_origin_is_down_and_across_restarts(tmp_path: Path,
                                                               edge_factory) -> None:
    up = start_upstream(tmp_path / "upstream")
    cached, uncached = up.add_blob(photo(seed=1)), up.add_blob(photo(seed=2))
    cache_dir = tmp_path / "cache"
    image_url = f"/img/feed_fullsize/plain/{DID}/{cached}@jpeg"
    blob_url = f"/blob/{DID}/{cached}"
    try:
        first = edge_factory(up.url, cache_dir=cache_dir)
        image = httpx.get(first.url + image_url, timeout=30)
        blob = httpx.get(first.url + blob_url, timeout=30)
        assert image.status_code == blob.status_code == 200
    finally:
        up.proc.stop()
    # Origin down: the cached items still come, the uncached one fails fast.
    assert httpx.get(first.url + image_url).content == image.content
    down = httpx.get(f"{first.url}/img/feed_fullsize/plain/{DID}/{uncached}@jpeg", timeout=30)
    assert down.status_code in (502, 504)
    assert int(down.headers["retry-after"]) > 0
    assert down.json()["error"]
    # A new edge process on the same cache directory: the disk tier survived.
    first.proc.stop()
    second = edge_factory(up.url, cache_dir=cache_dir)
    assert httpx.get(second.url + image_url).content == image.content
    assert httpx.get(second.url + blob_url).content == blob.content
    assert second.metric("atcdn_edge_origin_fetches_total") == 0
    assert second.metric("atcdn_edge_cache_hits_total") >= 2


def test_corrupt_origin_is_never_served_or_cached(tmp_path: Path, edge_factory) -> None:
    up = start_upstream(tmp_path / "upstream", env={"STANDIN_FLIP": "1"})
    try:
        cid = up.add_blob(photo(seed=3))
        edge = edge_factory(up.url)
        for _ in range(2):
            for path in (f"/img/avatar/plain/{DID}/{cid}@jpeg", f"/blob/{DID}/{cid}"):
                r = httpx.get(edge.url + path, timeout=30)
                assert r.status_code == 502, r.text
                assert r.json()["error"] == "VerificationFailed"
                assert "retry-after" in r.headers
        # Nothing was cached: every request went to the origin again.
        assert sum(1 for line in up.requests() if f"GET /blob/{cid}" in line) == 4
        assert edge.metric("atcdn_edge_verification_failures_total") == 4
        assert edge.metric("atcdn_edge_transforms_total") == 0
    finally:
        up.proc.stop()


def test_takedown_and_purge(upstream: Upstream, edge_factory) -> None:
    cid = upstream.add_blob(photo(400, 300, seed=4))
    edge = edge_factory(upstream.url, workers=2)
    url = f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg"
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.get(url, timeout=30).status_code == 200

    assert httpx.post(f"{edge.url}/admin/takedown", json={"cid": cid}).status_code == 401
    r = httpx.post(f"{edge.url}/admin/takedown", json={"cid": cid}, headers=auth)
    assert r.status_code == 200 and r.json()["purged"] >= 2
    for _ in range(6):  # every worker answers 451, whatever its memory tier held
        blocked = httpx.get(url)
        assert blocked.status_code == 451 and blocked.json()["error"] == "TakenDown"
    assert httpx.get(f"{edge.url}/blob/{DID}/{cid}").status_code == 451

    r = httpx.post(f"{edge.url}/admin/restore", json={"cid": cid}, headers=auth)
    assert r.status_code == 200 and r.json()["changed"] is True
    assert httpx.get(url, timeout=30).status_code == 200
    assert edge.metric("atcdn_edge_origin_fetches_total") == 2  # the purge dropped the source

    # A moderation tool's purge by path, then the plain function by DID.
    r = httpx.post(f"{edge.url}/admin/purge", json={"paths": [f"/img/{DID}/{cid}"]}, headers=auth)
    assert r.status_code == 200 and r.json()["purged"] >= 2
    assert httpx.get(url, timeout=30).status_code == 200
    assert edge.metric("atcdn_edge_origin_fetches_total") == 3
    settings = EdgeSettings(cache_dir=edge.cache_dir)
    assert purge(did=DID, settings=settings) >= 2
    assert httpx.get(url, timeout=30).status_code == 200
    assert edge.metric("atcdn_edge_origin_fetches_total") == 4

    bad = httpx.post(f"{edge.url}/admin/purge", json={"paths": ["/etc/passwd"]}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"] == "InvalidRequest"


def test_account_takedown_blocks_every_blob_of_the_did(upstream: Upstream, edge_factory) -> None:
    cid = upstream.add_blob(photo(300, 200, seed=5))
    edge = edge_factory(upstream.url)
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
    httpx.post(f"{edge.url}/admin/takedown", json={"did": DID}, headers=auth).raise_for_status()
    assert httpx.get(f"{edge.url}/blob/{DID}/{cid}").status_code == 451
    assert httpx.get(f"{edge.url}/img/avatar/plain/{DID}/{cid}").status_code == 451
    # The purge by DID dropped the cached copy too (it was fetched for that DID).
    other = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
    before = edge.metric("atcdn_edge_origin_fetches_total")
    assert httpx.get(f"{edge.url}/blob/{other}/{cid}", timeout=30).status_code == 200
    assert edge.metric("atcdn_edge_origin_fetches_total") == before + 1


def test_overloaded_edge_answers_429(upstream: Upstream, edge_factory) -> None:
    cid = upstream.add_blob(photo(200, 100, seed=6))
    edge = edge_factory(upstream.url, env={"ATCDN_EDGE_MAX_PENDING_MISSES": "0"})
    r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
    assert r.status_code == 429 and r.json()["error"] == "Overloaded"
    assert int(r.headers["retry-after"]) > 0
    assert upstream.requests() == []


def test_retries_5xx_but_never_4xx(tmp_path: Path, edge_factory) -> None:
    up = start_upstream(tmp_path / "upstream", env={"STANDIN_FAIL_FIRST": "2"})
    try:
        cid = up.add_blob(photo(200, 100, seed=7))
        edge = edge_factory(up.url, env={"ATCDN_PDS_FALLBACK": "0"})
        assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
        assert sum(1 for line in up.requests() if f"GET /blob/{cid}" in line) == 3
        from atcdn.core.cid import compute

        missing = compute(b"missing")
        assert httpx.get(f"{edge.url}/blob/{DID}/{missing}", timeout=30).status_code == 404
        assert sum(1 for line in up.requests() if f"GET /blob/{missing}" in line) == 1
    finally:
        up.proc.stop()


def test_slow_origin_times_out_with_504(tmp_path: Path, edge_factory) -> None:
    up = start_upstream(tmp_path / "upstream", env={"STANDIN_DELAY": "5"})
    try:
        cid = up.add_blob(photo(200, 100, seed=8))
        edge = edge_factory(up.url, env={"ATCDN_EDGE_FETCH_TIMEOUT": "1"})
        r = httpx.get(f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg", timeout=30)
        assert r.status_code == 504 and r.json()["error"] == "UpstreamTimeout"
        assert int(r.headers["retry-after"]) > 0
    finally:
        up.proc.stop()
