"""The edge's disk tier evicts least-recently-used entries, in a background thread: a
store never evicts on the request's own path, a hit never waits for a whole cull, and the
hit ratios operators read move with the traffic."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from atcdn.core.status import numbers, parse_metrics
from atcdn.edge.cache import EVICTION_POLICY, Culler, DiskTier

from tests.helpers.nodes import Upstream
from tests.helpers.pictures import DID, photo

KB = 1024
BODY = bytes(range(256)) * 40  # 10 KB: below min_file_size, so the entry lives in SQLite


def settle(tier: DiskTier, timeout: float = 10.0) -> None:
    """Wait until the background culler brought the tier back within its budget."""
    deadline = time.monotonic() + timeout
    while tier.cache.volume() > tier.cache.size_limit:
        assert time.monotonic() < deadline, "the culler never brought the tier under budget"
        time.sleep(0.05)


def test_the_chosen_policy_evicts_the_least_recently_used(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "disk", 2 << 20, 1 << 20)
    try:
        assert EVICTION_POLICY == "least-recently-used"
        assert tier.cache.eviction_policy == EVICTION_POLICY
        assert tier.cache.cull_limit == 0  # set never culls: the culler does
        for i in range(60):
            tier.put_bytes(f"old/{i}", BODY, f"cid{i}")
        for i in range(0, 60, 2):  # the even half is used again
            time.sleep(0.002)
            assert tier.get(f"old/{i}") is not None
        for i in range(400):  # 4 MB more into a 2 MB tier
            tier.put_bytes(f"new/{i}", BODY, f"new{i}")
        settle(tier)
        kept = [i for i in range(60) if tier.get(f"old/{i}") is not None]
        # The unused half went first; whatever of the old entries stayed was used again.
        assert all(i % 2 == 0 for i in kept), kept
        assert tier.get("new/399") is not None  # the newest stay
        assert tier.culler is not None and tier.culler.running and tier.culler.evicted > 0
    finally:
        tier.close()


def test_a_store_does_not_evict_and_a_hit_does_not_wait_for_a_cull(tmp_path: Path,
                                                                    monkeypatch) -> None:
    release = threading.Event()
    real_cull = Culler.cull

    def held_cull(self: Culler) -> int:
        release.wait(30)
        return real_cull(self)

    monkeypatch.setattr(Culler, "cull", held_cull)
    tier = DiskTier(tmp_path / "disk", 1 << 20, 1 << 20)
    try:
        tier.put_bytes("hot", BODY, "hot")
        for i in range(3000):  # 30 MB into a 1 MB tier, while the culler is held
            tier.put_bytes(f"k/{i}", BODY, f"cid{i}")
        # Every store returned without evicting anything: nothing was culled inline.
        assert tier.get("k/0") is not None and tier.get("hot") is not None
        assert tier.cache.volume() > 20 * tier.cache.size_limit
        # Now the culler removes ~3,000 entries in diskcache's batches of ten, one
        # transaction each, while this thread keeps reading a hot entry (an LRU read is a
        # write: it waits for the batch in progress, never for the whole cull).
        waits: list[float] = []
        started = time.monotonic()
        release.set()
        while tier.cache.volume() > tier.cache.size_limit:
            assert time.monotonic() - started < 60
            t = time.monotonic()
            assert tier.get("hot") is not None
            waits.append(time.monotonic() - t)
        cull_took = time.monotonic() - started
        assert len(waits) >= 5, (len(waits), cull_took)  # reads went on during the cull
        assert max(waits) < max(0.5 * cull_took, 0.05), (max(waits), cull_took)
        assert tier.get("hot") is not None  # read all along: the most recently used
        assert tier.get("k/1") is None  # the least recently used went (k/0 was read)
    finally:
        release.set()
        tier.close()


def test_a_process_that_never_writes_runs_no_culler(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "disk", 1 << 20, 1 << 20)
    try:
        tier.get("nothing")
        assert tier.culler is not None and not tier.culler.running
    finally:
        tier.close()


def test_hit_ratios_shown_to_operators_move(upstream: Upstream, edge_factory) -> None:
    """With no room in memory, every repeat is a disk-tier hit: the disk tier's hit
    ratio and the byte hit ratio on /status (and `atcdn status`) follow the requests."""
    cids = [upstream.add_blob(photo(seed=s)) for s in (11, 12)]
    edge = edge_factory(upstream.url, env={"ATCDN_EDGE_MEMORY_CACHE_SIZE": "1"})

    def rows() -> dict[str, str]:
        return dict(numbers("edge", parse_metrics(httpx.get(edge.url + "/metrics").text)))

    assert rows()["disk tier hit ratio"] == "n/a"
    for cid in cids:  # two misses
        assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
    assert rows()["disk tier hit ratio"] == "0.0%" and rows()["byte hit ratio"] == "0.0%"
    for _ in range(3):  # six disk hits
        for cid in cids:
            assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
    shown = rows()
    assert shown["disk tier hit ratio"] == "75.0%", shown
    assert shown["byte hit ratio"] == "75.0%", shown  # the two blobs are the same size
    assert edge.metric("atcdn_edge_cache_miss_bytes_total") > 0
    page = httpx.get(edge.url + "/status").text
    assert "disk tier hit ratio" in page and "75.0%" in page
