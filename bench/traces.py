"""Request traces and cache policies in memory, for measuring eviction (pure: no I/O).

Traces are lists of object ids, made from a seed so a run can be repeated:

- ``zipf``: ids drawn with P(rank k) proportional to 1/k**alpha (Zipf(1.0) is the usual
  model of web and media popularity); which id holds which rank is a seeded shuffle.
- ``with_scan``: a Zipf trace where a share of the requests are one-hit wonders (ids never
  asked again: a crawler, a backfill, old posts scrolled once).
- ``churn``: Zipf popularities, but objects live for a while and then are never asked
  again, as posts do: every epoch ``step`` new objects arrive and the oldest leave.

``simulate`` replays a trace through a byte-budgeted cache with one of diskcache's
eviction policies (``POLICIES``), modelled the way the edge drives its disk tier: a miss
stores the object, and the edge reads it back at once (so a stored entry has been used
once). The fleet bench uses it as the ideal cache a PoP is compared with.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("least-recently-stored", "least-recently-used", "least-frequently-used")


def zipf_weights(n: int, alpha: float = 1.0) -> list[float]:
    """Cumulative weights of ranks 1..n under Zipf(alpha), for ``random.choices``."""
    return list(itertools.accumulate(1.0 / k ** alpha for k in range(1, n + 1)))


def zipf(n: int, requests: int, *, alpha: float = 1.0, seed: int = 1) -> list[int]:
    """``requests`` ids in ``range(n)`` with Zipf(alpha) popularity."""
    rng = random.Random(seed)
    ids = list(range(n))
    rng.shuffle(ids)  # rank -> id: popularity does not follow the id
    ranks = rng.choices(range(n), cum_weights=zipf_weights(n, alpha), k=requests)
    return [ids[r] for r in ranks]


def with_scan(trace: Sequence[int], share: float, *, first_id: int, seed: int = 2) -> list[int]:
    """``trace`` with each request replaced, with probability ``share``, by a one-hit
    wonder: ids from ``first_id`` on, each used once."""
    rng = random.Random(seed)
    fresh = itertools.count(first_id)
    return [next(fresh) if rng.random() < share else i for i in trace]


def churn(alive: int, requests: int, *, step: int, epochs: int, alpha: float = 1.0,
          seed: int = 3) -> list[int]:
    """Requests over ``epochs`` epochs; in epoch e the objects alive are ids
    ``[e*step, e*step + alive)``, each with a fixed Zipf(alpha) weight (its rank among all
    objects is a seeded shuffle), so popular objects come and go."""
    rng = random.Random(seed)
    total = alive + step * epochs
    ranks = list(range(1, total + 1))
    rng.shuffle(ranks)
    out: list[int] = []
    per_epoch = requests // epochs
    for epoch in range(epochs):
        first = epoch * step
        weights = list(itertools.accumulate(1.0 / ranks[i] ** alpha
                                            for i in range(first, first + alive)))
        out += [first + i for i in rng.choices(range(alive), cum_weights=weights, k=per_epoch)]
    return out


def sizes_for(n: int, *, low: int, high: int, seed: int = 4) -> list[int]:
    """A size per id, log-uniform in [low, high] (many small objects, a few big ones)."""
    rng = random.Random(seed)
    return [int(low * (high / low) ** rng.random()) for _ in range(n)]


@dataclass
class Tally:
    requests: int = 0
    hits: int = 0
    bytes: int = 0
    hit_bytes: int = 0

    def add(self, size: int, hit: bool) -> None:
        self.requests += 1
        self.bytes += size
        if hit:
            self.hits += 1
            self.hit_bytes += size

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.bytes if self.bytes else 0.0


CULL_BATCH = 10  # diskcache evicts ten rows per transaction, whether in set or in cull()


class PolicyCache:
    """A byte-budgeted cache evicting as one of diskcache's policies does:
    least-recently-stored (FIFO), least-recently-used, or least-frequently-used (a use
    count that never decays, ties broken by age). Like diskcache, once over budget it
    evicts ``batch`` entries at a time; for LFU this matters: a batch takes the newest
    entry (used once) and the nine least used with it, which makes room for new entries
    even when every older one is used more often."""

    def __init__(self, budget: int, policy: str, batch: int = CULL_BATCH) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; one of {POLICIES}")
        self.budget = budget
        self.policy = policy
        self.batch = batch
        self.used = 0
        self.sizes: OrderedDict[int, int] = OrderedDict()  # oldest stored (or used) first
        self.counts: dict[int, int] = {}
        self.stored_at: dict[int, int] = {}
        self._heap: list[tuple[int, int, int]] = []  # (count, stored_at, id), stale rows too
        self._clock = itertools.count()

    def __contains__(self, key: int) -> bool:
        return key in self.sizes

    def request(self, key: int, size: int) -> bool:
        """Ask for ``key``: True on a hit; a miss stores it (if it fits at all)."""
        if key in self.sizes:
            if self.policy == "least-recently-used":
                self.sizes.move_to_end(key)
            elif self.policy == "least-frequently-used":
                self.counts[key] += 1
                heapq.heappush(self._heap, (self.counts[key], self.stored_at[key], key))
            return True
        if size <= self.budget:
            self.sizes[key] = size
            self.used += size
            self.counts[key] = 1  # stored, then read back once by the edge
            self.stored_at[key] = next(self._clock)
            if self.policy == "least-frequently-used":
                heapq.heappush(self._heap, (1, self.stored_at[key], key))
            while self.used > self.budget:
                for _ in range(min(self.batch, len(self.sizes))):
                    self._evict()
        return False

    def _evict(self) -> None:
        if self.policy != "least-frequently-used":
            key, size = self.sizes.popitem(last=False)
        else:
            while True:
                count, stored, key = heapq.heappop(self._heap)
                if self.counts.get(key) == count and self.stored_at.get(key) == stored:
                    break
            size = self.sizes.pop(key)
        self.used -= size
        del self.counts[key], self.stored_at[key]


def simulate(trace: Sequence[int], sizes: Sequence[int], budget: int, policy: str,
             batch: int = CULL_BATCH) -> Tally:
    """Replay ``trace`` (ids indexing ``sizes``) through a ``PolicyCache``."""
    cache = PolicyCache(budget, policy, batch)
    tally = Tally()
    for key in trace:
        size = sizes[key]
        tally.add(size, cache.request(key, size))
    return tally
