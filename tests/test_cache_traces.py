"""bench/traces.py, the pure half of the eviction and fleet benchmarks: the traces have
the shape they claim, and the in-memory policies evict as diskcache's do."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.traces import (
    POLICIES,
    PolicyCache,
    churn,
    simulate,
    sizes_for,
    with_scan,
    zipf,
    zipf_weights,
)


def test_zipf_popularity_and_repeatability() -> None:
    n, requests = 1000, 200_000
    trace = zipf(n, requests, seed=7)
    assert trace == zipf(n, requests, seed=7) and trace != zipf(n, requests, seed=8)
    counts = Counter(trace).most_common()
    harmonic = zipf_weights(n)[-1]
    # The top object takes 1/H(n) of the requests, the 10th a tenth of that.
    assert counts[0][1] / requests == pytest.approx(1 / harmonic, rel=0.05)
    assert counts[9][1] / counts[0][1] == pytest.approx(0.1, rel=0.25)
    assert counts[0][0] != 0  # ranks are shuffled over ids


def test_one_hit_wonders_are_used_once() -> None:
    base = zipf(500, 10_000)
    trace = with_scan(base, 0.3, first_id=500)
    wonders = [i for i in trace if i >= 500]
    assert len(wonders) == len(set(wonders))
    assert 0.27 < len(wonders) / len(trace) < 0.33


def test_churn_retires_objects() -> None:
    trace = churn(100, 10_000, step=20, epochs=5)
    first, last = trace[:2000], trace[-2000:]
    assert max(first) < 100 and min(last) >= 80
    assert not set(first) & set(range(120, 200))


def test_sizes_are_log_uniform_in_range() -> None:
    sizes = sizes_for(10_000, low=1000, high=100_000)
    assert min(sizes) >= 1000 and max(sizes) <= 100_000
    assert 0.45 < sum(s < 10_000 for s in sizes) / len(sizes) < 0.55  # the geometric middle


@pytest.mark.parametrize("policy,survivor", [("least-recently-stored", "c"),
                                             ("least-recently-used", "a"),
                                             ("least-frequently-used", "a")])
def test_each_policy_evicts_its_own_victim(policy: str, survivor: str) -> None:
    cache = PolicyCache(30, policy, batch=1)
    ids = {"a": 1, "b": 2, "c": 3, "d": 4}
    for name in "abc":
        assert not cache.request(ids[name], 10)
    assert cache.request(ids["a"], 10)  # a is used again
    cache.request(ids["d"], 10)  # full: one must go
    assert ids["d"] in cache and ids[survivor] in cache
    gone = {"least-recently-stored": "a", "least-recently-used": "b",
            "least-frequently-used": "b"}[policy]
    assert ids[gone] not in cache
    assert cache.used <= 30


def test_like_diskcache_a_full_cache_evicts_ten_at_a_time() -> None:
    cache = PolicyCache(100, "least-frequently-used")
    for i in range(10):
        cache.request(i, 10)
        cache.request(i, 10)  # every old entry is used twice
    cache.request(99, 10)  # over budget: the newest (used once) and the nine least used go
    assert 99 not in cache and len(cache.sizes) == 1
    assert not cache.request(98, 10) and 98 in cache  # room again for a new entry


def test_frequency_wins_on_static_zipf_and_loses_to_churn() -> None:
    sizes = [1] * 30_000
    static = zipf(2000, 40_000)
    moving = churn(1000, 100_000, step=100, epochs=50)
    lru, lfu = "least-recently-used", "least-frequently-used"
    assert simulate(static, sizes, 200, lfu).hit_ratio > simulate(static, sizes, 200, lru).hit_ratio
    assert simulate(moving, sizes, 200, lru).hit_ratio > simulate(moving, sizes, 200, lfu).hit_ratio


def test_too_big_is_never_stored_and_tally_counts_bytes() -> None:
    tally = simulate([0, 0, 1, 1], [50, 5], 10, POLICIES[1])
    assert (tally.requests, tally.hits, tally.bytes, tally.hit_bytes) == (4, 1, 110, 5)
    assert tally.byte_hit_ratio == pytest.approx(5 / 110)
    with pytest.raises(ValueError):
        PolicyCache(10, "random")
