"""The takedown gate: what the front refuses (451), and what work in flight must not cache.

``Gate`` is the one place a request meets the node's takedown set: the front asks
``refuses(did, cid)`` for every ``/img``, ``/blob`` and ``/watch`` request before any
tier is consulted.

A purge or takedown can arrive while a fetch, a transform or a transcode of the same
blob is running; their result must not land in a cache afterwards. ``Purges`` records,
node-wide, when each CID and DID was last purged (a *tombstone*), and the purge writes it
*before* it evicts. Work notes ``clock()`` when it starts and, after each write, asks
``purged_since(started, did, cid)``: if a purge came in between, it removes what it
wrote (the purge may have run before the write) and its answer is re-checked against
the takedown set (451 when it was a takedown).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import diskcache
from atcdn.core.errors import taken_down

if TYPE_CHECKING:  # edge/takedown.py writes tombstones through Purges
    from atcdn.edge.cache import MemoryTier
    from atcdn.edge.takedown import Generation, Takedowns

TOMBSTONE_SECONDS = 24 * 3600.0  # longer than any work can run
TOMBSTONE_BUDGET = 64 * 1024**2


class Purges:
    """When each CID and DID was last purged on this node (shared by its processes)."""

    def __init__(self, directory: Path) -> None:
        self.cache = diskcache.Cache(str(directory), size_limit=TOMBSTONE_BUDGET,
                                     statistics=False)

    @staticmethod
    def clock() -> int:
        return time.time_ns()

    def mark(self, *, did: str | None = None, cid: str | None = None) -> None:
        now = self.clock()
        for key in _keys(did, cid):
            self.cache.set(key, now, expire=TOMBSTONE_SECONDS)

    def since(self, started: int, *, did: str | None = None, cid: str | None = None) -> bool:
        """Whether ``did`` or ``cid`` was purged at or after ``started`` (a ``clock()``)."""
        return any(self.cache.get(key, 0) >= started for key in _keys(did, cid))


def _keys(did: str | None, cid: str | None) -> list[str]:
    return ([f"did:{did}"] if did else []) + ([f"cid:{cid}"] if cid else [])


class Gate:
    """One worker's view of the node's takedowns and purges."""

    def __init__(self, takedowns: Takedowns, generation: Generation, memory: MemoryTier,
                 purges: Purges) -> None:
        self.takedowns = takedowns
        self.generation = generation
        self.memory = memory
        self.purges = purges
        self.clock = purges.clock

    def refuses(self, did: str, cid: str) -> bool:
        """Whether a request for ``cid`` under ``did`` is refused (451), after picking up
        the takedowns and purges made by any process of this node (a ``stat`` at most
        every CHECK_EVERY seconds; on a change the memory tier is emptied)."""
        if self.generation.changed():
            self.memory.clear()
            self.takedowns.load()
        return self.takedowns.blocked(did, cid)

    def purged_since(self, started: int, did: str, cid: str) -> bool:
        """Whether a purge of ``did`` or ``cid`` came in since ``started`` (a ``clock()``):
        then work that wrote to a cache removes it and calls ``recheck``."""
        return self.purges.since(started, did=did, cid=cid)

    def recheck(self, did: str, cid: str) -> None:
        """After a purge met work in flight: AtcdnError 451 when it was a takedown."""
        self.takedowns.load()
        if self.takedowns.blocked(did, cid):
            raise taken_down(cid)
