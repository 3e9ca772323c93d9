"""Receiving a blob: streamed into a temp file while it is hashed (both servers use it).

A ``Staging`` is the one way bytes from the network reach local disk: the origin stages
every upload, an edge every fetch. The temp file is named ``upload-*.part`` and holds a
lock while it lives, so ``sweep`` can remove what a killed process left behind; only a
staging whose ``verifier`` matches a CID is ever committed to a store or a cache.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from atcdn.core.cid import Verifier
from atcdn.core.mime import SNIFF_BYTES

BATCH = 1024 * 1024  # bytes hashed and written per hand-off to the worker threads
IOV_MAX = 512  # buffers per writev (the kernel limit is 1024)


class Staging:
    """A blob being received: appended to a locked temp file and hashed on the way.

    Network chunks are gathered into batches of about ``BATCH`` bytes; each batch is
    hashed in one worker thread and written (``writev``, no copy) in another, both
    releasing the GIL, while the event loop receives the next batch. Only one batch is
    in flight, which keeps the hash in order and memory bounded.

    The temp file holds an exclusive ``flock`` while it lives: a process that dies
    mid-upload releases it, which is how ``sweep`` knows a temp file is orphaned.
    """

    def __init__(self, tmp_dir: Path, reserve: int = 0) -> None:
        """``reserve``: the expected size (a declared Content-Length). The temp file is
        extended to it at once (sparse), so whoever sums the folder's file sizes counts
        the bytes still to come from every process; ``finish`` cuts it to what came."""
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if reserve > 0:
            os.ftruncate(fd, reserve)
        self._reserved = reserve
        self.path = Path(name)
        self.verifier = Verifier()
        self.head = b""  # first bytes, for MIME sniffing
        self.size = 0  # bytes received so far (decoded)
        self.received = 0  # bytes on the wire, when the receiver knows them (compressed bodies)
        self._fd: int | None = fd
        self._batch: list[bytes] = []
        self._batched = 0
        self._jobs: list[Future] = []

    async def write(self, chunk: bytes) -> None:
        if len(self.head) < SNIFF_BYTES:
            self.head += chunk[: SNIFF_BYTES - len(self.head)]
        self.size += len(chunk)
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= BATCH:
            await self._flush()

    def reserve(self, size: int) -> None:
        """Extend the reservation to ``size`` bytes (bodies of unknown length, as they
        arrive); never shrinks it."""
        if size > self._reserved and self._fd is not None:
            os.ftruncate(self._fd, size)
            self._reserved = size

    async def finish(self) -> None:
        """Hash and write everything received: then ``verifier`` knows the whole body."""
        await self._flush()
        await self._wait()
        if self._reserved != self.size and self._reserved and self._fd is not None:
            os.ftruncate(self._fd, self.size)

    def matches(self, cid: str) -> bool:
        """Whether everything received (after ``finish``) is the blob ``cid`` names."""
        assert not self._batch and not self._jobs, "finish() first"
        return self.verifier.matches(cid)

    def sync_and_close(self) -> None:
        """Make the bytes durable before they are committed (also once closed)."""
        fd = self._fd if self._fd is not None else os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            if fd != self._fd:
                os.close(fd)
        self.close()

    def discard(self) -> None:
        """Remove the temp file, once any batch still being written is done with it."""
        running = [job for job in self._jobs if not job.done()]
        self._jobs = []
        if not running:
            self._remove()
            return
        lock = threading.Lock()
        left = [len(running)]

        def done(_: Future) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._remove()

        for job in running:
            job.add_done_callback(done)

    async def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batched = self._batch, [], 0
        await self._wait()
        executor = _executor()
        self._jobs = [executor.submit(self._hash, batch), executor.submit(self._write, batch)]

    async def _wait(self) -> None:
        if self._jobs:
            await asyncio.gather(*(asyncio.wrap_future(job) for job in self._jobs))
            self._jobs = []

    def _hash(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.verifier.update(chunk)

    def _write(self, batch: list[bytes]) -> None:
        fd = self._fd
        assert fd is not None
        for i in range(0, len(batch), IOV_MAX):
            group = batch[i:i + IOV_MAX]
            written = os.writev(fd, group)
            total = sum(map(len, group))
            if written < total:  # short write: finish the group the slow way
                view = memoryview(b"".join(group))[written:]
                while view:
                    view = view[os.write(fd, view):]

    def close(self) -> None:
        """Close the temp file (it stays until ``discard``), e.g. before others read it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _remove(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    """The threads that hash and write staged batches (one pool per process)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=16, thread_name_prefix="atcdn-staging")
    return _EXECUTOR


def sweep(tmp_dir: Path, min_age: float = 60.0) -> int:
    """Delete temp files whose writer died (their lock is free); return how many.

    Files younger than ``min_age`` seconds are left alone: one may be between its
    creation and its ``flock``.
    """
    removed = 0
    now = time.time()
    for path in tmp_dir.glob("upload-*.part"):
        try:
            if now - path.stat().st_mtime < min_age:
                continue
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live upload in some worker
        else:
            path.unlink(missing_ok=True)
            removed += 1
        finally:
            os.close(fd)
    return removed
