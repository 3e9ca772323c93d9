"""A herd of identical misses is one miss: the per-worker bound on misses in progress
(ATCDN_EDGE_MAX_PENDING_MISSES) must not refuse requests that only wait on a running one."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.helpers.nodes import Upstream
from tests.helpers.pictures import DID, herd, photo


def test_herd_larger_than_the_miss_bound_is_served(upstream: Upstream, edge_factory) -> None:
    cid = upstream.add_blob(photo(seed=11))
    edge = edge_factory(upstream.url, workers=1, env={"ATCDN_EDGE_MAX_PENDING_MISSES": "2"})
    responses = asyncio.run(herd(f"{edge.url}/img/feed_fullsize/plain/{DID}/{cid}@jpeg", 40))
    assert [r.status_code for r in responses] == [200] * 40
    assert len({r.content for r in responses}) == 1
    assert edge.metric("atcdn_edge_origin_fetches_total") == 1
    assert edge.metric("atcdn_edge_transforms_total") == 1


def test_watch_source_fetches_count_as_misses(tmp_path, edge_factory) -> None:
    """A /watch request whose source is not cached fetches it: that is a miss like an /img
    one, under the same per-worker bound (it bypassed it)."""
    import concurrent.futures

    from tests.helpers.nodes import start_upstream

    slow = start_upstream(tmp_path / "slow", env={"STANDIN_DELAY": "2"})
    try:
        cids = [slow.add_blob(photo(width=64, height=48, seed=n)) for n in range(3)]
        edge = edge_factory(slow.url, workers=1, env={"ATCDN_EDGE_MAX_PENDING_MISSES": "1"})
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            first = pool.submit(httpx.get, f"{edge.url}/watch/{DID}/{cids[0]}/playlist.m3u8",
                                timeout=30)
            time.sleep(0.5)  # its source fetch is in progress (the origin waits 2 s)
            watch = pool.submit(httpx.get, f"{edge.url}/watch/{DID}/{cids[1]}/playlist.m3u8",
                                timeout=30)
            img = pool.submit(httpx.get, f"{edge.url}/img/avatar/plain/{DID}/{cids[2]}@jpeg",
                              timeout=30)
            assert watch.result().status_code == 429, watch.result().text
            assert watch.result().json()["error"] == "Overloaded"
            assert "retry-after" in watch.result().headers
            assert img.result().status_code == 429, img.result().text
            assert first.result().status_code != 429
        # The bound frees with the fetch: the same /watch now gets past it.
        assert httpx.get(f"{edge.url}/watch/{DID}/{cids[1]}/playlist.m3u8",
                         timeout=30).status_code != 429
    finally:
        slow.proc.stop()
