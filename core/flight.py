"""Single-flight across every worker process of a node (the edge's fetches and
transforms, the origin's PDS pulls).

N concurrent identical misses cost one origin fetch and one transform: inside a process
the first caller runs the work and the others await its future; across processes the
runner holds a file lock for the key, and the work itself re-checks the shared disk
cache once it has the lock, so a process that waited finds the other's result there.

Only *identical* work may share a key: every waiter gets the runner's answer, errors
included. So a key names everything the answer depends on (a source fetch depends on
the DID it is fetched for: its PDS, the origin's takedowns; a transform of verified
bytes does not). The work and every wait are bounded by ``deadline`` seconds (504).
When another process holds a key's lock past the deadline, the work goes ahead anyway
(``proceed_on_timeout``, the edge: the result is the same bytes) or the wait is answered
504 (the origin: a second pull would cost the PDS a second getBlob).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from atcdn.core.errors import AtcdnError
from filelock import AsyncFileLock, Timeout

T = TypeVar("T")
log = logging.getLogger("atcdn.flight")


class SingleFlight:
    def __init__(self, lock_dir: Path, *, deadline: float = 120.0,
                 proceed_on_timeout: bool = True) -> None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.lock_dir = lock_dir
        self.deadline = deadline
        self.proceed_on_timeout = proceed_on_timeout
        self._inflight: dict[str, asyncio.Future] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` once for all concurrent callers of ``key`` on this node.

        ``work`` must look in the shared cache first: it runs under the node-wide lock.
        """
        running = self._inflight.get(key)
        if running is not None:
            return await self._bounded(asyncio.shield(running))
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with self._lock(key):
                result = await self._bounded(work())
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        deadline = asyncio.timeout(self.deadline)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if not deadline.expired():
                raise  # the work's own timeout, answered by the work's caller
            raise AtcdnError(504, "Timeout", f"gave up after {self.deadline:g} s") from None

    def _lock(self, key: str) -> _NodeLock:
        # One lock file per key: no two keys ever share (and so never deadlock on) a lock.
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return _NodeLock(self.lock_dir / f"{name}.lock", self.deadline, self.proceed_on_timeout)


class _NodeLock:
    """A file lock (taken in a thread) that, if another process holds it too long, lets
    the work go ahead (``proceed``) or answers 504."""

    def __init__(self, path: Path, wait: float, proceed: bool) -> None:
        self.lock = AsyncFileLock(str(path), timeout=wait)
        self.wait = wait
        self.proceed = proceed
        self.held = False

    async def __aenter__(self) -> None:
        try:
            await self.lock.acquire()
            self.held = True
        except Timeout:
            if not self.proceed:
                raise AtcdnError(504, "Timeout", f"another worker held this work for over"
                                 f" {self.wait:g} s") from None
            log.warning("single-flight lock %s timed out; proceeding", self.lock.lock_file)

    async def __aexit__(self, *exc: object) -> None:
        if self.held:
            await self.lock.release()
