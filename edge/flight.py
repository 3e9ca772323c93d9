"""Single-flight across every worker process of a node.

N concurrent identical misses cost one origin fetch and one transform: inside a process
the first caller runs the work and the others await its future; across processes the
runner holds a file lock for the key, and the work itself re-checks the shared disk
cache once it has the lock, so a process that waited finds the other's result there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from filelock import AsyncFileLock, Timeout

T = TypeVar("T")
log = logging.getLogger("atcdn.edge")


class SingleFlight:
    def __init__(self, lock_dir: Path, *, wait: float = 120.0) -> None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.lock_dir = lock_dir
        self.wait = wait
        self._inflight: dict[str, asyncio.Future] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` once for all concurrent callers of ``key`` on this node.

        ``work`` must look in the shared cache first: it runs under the node-wide lock.
        """
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            async with self._lock(key):
                result = await work()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    def joins(self, key: str) -> bool:
        """Whether a call for ``key`` now would only wait on one already running here."""
        return key in self._inflight

    def _lock(self, key: str) -> _NodeLock:
        # One lock file per key: no two keys ever share (and so never deadlock on) a lock.
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return _NodeLock(self.lock_dir / f"{name}.lock", self.wait)


class _NodeLock:
    """A file lock that, if another process holds it too long, lets the work go ahead
    rather than fail the request (the result is the same bytes either way)."""

    def __init__(self, path: Path, wait: float) -> None:
        self.lock = AsyncFileLock(str(path), timeout=wait)
        self.held = False

    async def __aenter__(self) -> None:
        try:
            await self.lock.acquire()
            self.held = True
        except Timeout:
            log.warning("single-flight lock %s timed out; proceeding", self.lock.lock_file)

    async def __aexit__(self, *exc: object) -> None:
        if self.held:
            await self.lock.release()
