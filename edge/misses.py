"""The per-worker bound on cache misses in progress (``ATCDN_EDGE_MAX_PENDING_MISSES``).

A miss fetches a source or runs a transform, so misses are bounded per worker: beyond
the bound a new one is refused with 429 ``Overloaded``. Requests that join a miss
already running here for the same entry and DID (the same work: core/flight.py) cost
one future, not a fetch or a transform, so they neither count nor are refused: a herd
of identical requests is one miss. ``/img`` and ``/blob`` misses (edge/front.py) and the
source fetches of ``/watch`` (``bounded``, edge/app.py) share one ``Misses``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from atcdn.core.errors import overloaded
from atcdn.edge import urls

T = TypeVar("T")
Miss = tuple[str, str]  # (cache key, DID)


class Misses:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0  # distinct misses in progress
        self.requests: Counter[Miss] = Counter()  # requests per miss

    @contextmanager
    def admit(self, miss: Miss) -> Iterator[None]:
        """Count ``miss`` while the block runs; AtcdnError 429 when the bound is reached
        and no identical miss is running."""
        joining = miss in self.requests
        if not joining and self.pending >= self.limit:
            raise overloaded()
        self.pending += not joining
        self.requests[miss] += 1
        try:
            yield
        finally:
            self.pending -= not joining
            self.requests[miss] -= 1
            if not self.requests[miss]:
                del self.requests[miss]

    def bounded(self, get_source: Callable[[str, str], Awaitable[T]]
                ) -> Callable[[str, str], Awaitable[T]]:
        """``get_source(did, cid)`` counted as a miss of the source (for ``/watch``)."""
        async def run(did: str, cid: str) -> T:
            with self.admit((urls.source_key(cid), did)):
                return await get_source(did, cid)
        return run
