"""Running transcodes: one child process per video, bounded, queued, single-flight per node.

Each transcode is ``python -m atcdn.edge.video`` in a child process (RLIMIT_AS inside, a
wall timeout outside; both in core/limits.py), so hostile media can crash or exhaust only
that child; the child has no network and, under root, its own user (core/sandbox.py). Coordination between the edge's worker processes goes through files under
``{cache_dir}/video/`` (edge/transcode_files.py names those of one video):

- ``{cid}/.lock`` is held by the child for the whole transcode: whoever finds it held
  knows the video is being transcoded and just serves the files as they appear;
- ``{cid}/done`` (written last) marks a finished transcode, which survives restarts;
  ``{cid}/error.json`` a refused source (or a transient failure, retried later);
- ``slots/{n}.lock``: a transcode runs only while its parent holds one of
  ``video_max_concurrent`` slot locks, so the bound holds for the whole node. Requests that
  find every slot taken wait in this worker's queue; when it is full they get 429.

A directory with neither ``done``, ``error.json`` nor a held lock is what an interrupted
transcode left; it is never served, and the next request starts the transcode over.

A purge or takedown of the video (edge/gate.py tombstones) stops its transcode: the
worker that runs the child looks for a tombstone while it waits, kills the child and
removes its folder, and a transcode that finishes after a purge leaves nothing behind.
``settle`` waits for that, so a purge answers only once the video is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from atcdn.core.environment import without_secrets
from atcdn.core.errors import overloaded
from atcdn.core.files import write_json
from atcdn.core.limits import VideoLimits
from atcdn.core.settings import EdgeSettings
from atcdn.edge.gate import Purges
from atcdn.edge.transcode_files import (
    DONE_NAME,
    ERROR_NAME,
    EXIT_BUSY,
    EXIT_DONE,
    EXIT_REFUSED,
    STATE_NAME,
    VideoError,
    clear,
    is_locked,
)
from atcdn.edge.transcode_files import unless_locked as _unless_locked
from atcdn.edge.video_space import VideoSpace, split
from filelock import FileLock, Timeout
from prometheus_client import Counter, Gauge

STARTED = Counter("atcdn_video_transcodes_started", "Video transcodes started")
FINISHED = Counter("atcdn_video_transcodes_finished", "Video transcodes finished")
FAILED = Counter("atcdn_video_transcodes_failed", "Video transcodes refused, crashed or timed out")
QUEUED = Gauge("atcdn_video_transcode_queue_length", "Transcodes waiting for a slot",
               multiprocess_mode="livesum")
ENCODED = Counter("atcdn_video_encoded_seconds", "Seconds of video transcoded")

State = Literal["absent", "queued", "running", "done", "failed"]
TRANSIENT_RETRY_SECONDS = 300.0  # a timed-out transcode is tried again after this
SLOT_POLL_SECONDS = 0.2
PURGE_POLL_SECONDS = 0.1  # how often a running transcode looks for a purge of its video
SETTLE_SECONDS = 10.0  # how long a purge waits for a running transcode to stop
ROOT = Path(__file__).resolve().parent.parent  # so the child finds the edge package




class Transcodes:
    """The transcodes of one edge worker process (and what it can see of the others')."""

    def __init__(self, settings: EdgeSettings, purges: Purges,
                 owner: Callable[[str], tuple[str, str] | None] = lambda cid: None) -> None:
        self.root = Path(settings.cache_dir) / "video"
        self.purges = purges
        self.owner = owner  # whose source a video is (edge/shares.py); None: nobody's
        self.limits = VideoLimits.from_settings(settings)
        self.slots = max(1, settings.video_max_concurrent)
        self.queue_length = settings.video_queue_length
        self.decoder_user = settings.decoder_user  # the child's user when we are root
        # Outputs, sources and refusals in the node's budget, a stranger's within its
        # shares of it (edge/video_space.py).
        self.space = VideoSpace(self.root, split(settings.cache_size, settings.video_share)[1],
                                stale=2 * self.limits.timeout, share_did=settings.share_did,
                                share_pds=settings.share_pds)
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self.waiting = 0
        (self.root / "slots").mkdir(parents=True, exist_ok=True)

    def folder(self, cid: str) -> Path:
        return self.root / cid

    # ------------------------------------------------------------------ state

    def state(self, cid: str) -> State:
        folder = self.folder(cid)
        if (folder / DONE_NAME).exists():
            return "done"
        if self.error(cid) is not None:
            return "failed"
        if cid in self.jobs and not self._locked(folder):
            return "queued"
        if self._locked(folder):
            return "running"
        return "absent"

    def error(self, cid: str) -> dict | None:
        """The stored refusal of this video, if any (expired transient ones are dropped)."""
        path = self.folder(cid) / ERROR_NAME
        try:
            error = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if error.get("transient") and time.time() - error.get("at", 0) > TRANSIENT_RETRY_SECONDS:
            path.unlink(missing_ok=True)
            return None
        return error

    def progress(self, cid: str) -> dict:
        try:
            return json.loads((self.folder(cid) / STATE_NAME).read_text())
        except (OSError, ValueError):
            return {}

    _locked = staticmethod(is_locked)

    # ------------------------------------------------------------------ start

    async def ensure(self, cid: str, source: Callable[[], Awaitable[Path]]) -> State:
        """Make sure this video is transcoded or being transcoded; return its state.

        Raises AtcdnError 429 when the queue is full; whatever ``source`` raises (fetch
        failures).
        """
        state = self.state(cid)
        if state != "absent":
            return state
        if self.waiting >= self.queue_length:
            raise overloaded("too many videos are being transcoded; retry later",
                             retry_after=max(1, int(self.waiting)))
        started = self.purges.clock()
        path = await source()
        state = self.state(cid)
        if state != "absent":
            return state
        if self.folder(cid).exists():  # what an interrupted transcode left: never served
            self._discard(self.folder(cid))
        self.folder(cid).mkdir(parents=True, exist_ok=True)
        self.space.own(cid, self.owner(cid))
        size = path.stat().st_size
        if size > self.limits.max_bytes:
            limit = self.limits.max_bytes
            self._refuse(cid, VideoError(413, "TooLarge",
                                         f"video is {size} bytes, the limit is {limit}"))
            return "failed"
        self.waiting += 1  # counted now, so concurrent requests see the queue grow
        QUEUED.inc()
        self.jobs[cid] = asyncio.create_task(self._run(cid, path, started))
        return "queued"

    def _refuse(self, cid: str, error: VideoError, transient: bool = False) -> None:
        FAILED.inc()
        body = error.to_json() | ({"transient": True, "at": time.time()} if transient else {})
        write_json(self.folder(cid) / ERROR_NAME, body)

    async def _run(self, cid: str, source: Path, started: int) -> None:
        try:
            slot = await self._slot()
        finally:
            self.waiting -= 1
            QUEUED.dec()
        try:
            if self.purges.since(started, cid=cid):  # purged while it was queued
                _remove(self.folder(cid))
                return
            await self._child(cid, source, started)
        finally:
            slot.release()
            self.jobs.pop(cid, None)
            with contextlib.suppress(OSError):  # e.g. the folder purged under us
                await asyncio.to_thread(self.space.trim)  # with this video counted

    async def _slot(self) -> FileLock:
        while True:
            for n in range(self.slots):
                lock = FileLock(str(self.root / "slots" / f"{n}.lock"), thread_local=False)
                try:
                    lock.acquire(timeout=0)
                    return lock
                except Timeout:
                    continue
            await asyncio.sleep(SLOT_POLL_SECONDS)

    async def _child(self, cid: str, source: Path, started: int) -> None:
        folder = self.folder(cid)
        STARTED.inc()
        # The child decodes a stranger's file: it gets no secrets (core/environment.py).
        env = {**without_secrets(os.environ), "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        log = open(self.root / f"{cid}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "atcdn.edge.video", str(source), str(folder),
                json.dumps(asdict(self.limits)), self.decoder_user, env=env, stdout=log, stderr=log,
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            log.close()
        try:
            code = await self._wait(proc, cid, started)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            proc.kill()
            await proc.wait()
            self._discard(folder)
            if isinstance(exc, asyncio.CancelledError):
                raise
            limit = self.limits.timeout
            self._refuse(cid, VideoError(503, "TranscodeTimeout",
                                         f"transcode took longer than {limit:.0f} s"),
                         transient=True)
            return
        if code is None or self.purges.since(started, cid=cid):  # purged meanwhile
            _remove(folder)
            return
        if code == EXIT_DONE and (folder / DONE_NAME).exists():
            FINISHED.inc()
            try:
                ENCODED.inc(json.loads((folder / DONE_NAME).read_text())["encoded_seconds"])
            except (OSError, ValueError, KeyError):
                pass
        elif code == EXIT_REFUSED:
            FAILED.inc()
        elif code != EXIT_BUSY:  # killed by a signal, out of memory, a bug...
            self._discard(folder)
            self._refuse(cid, VideoError(422, "UndecodableMedia",
                                         f"the transcoder died on this video (exit {code})"))

    async def _wait(self, proc: asyncio.subprocess.Process, cid: str,
                    started: int) -> int | None:
        """The child's exit code, or None when a purge of the video stopped it; raises
        TimeoutError after ``video_timeout``."""
        exited = asyncio.ensure_future(proc.wait())
        deadline = time.monotonic() + self.limits.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait({exited}, timeout=min(PURGE_POLL_SECONDS, left))
                if exited.done():
                    return exited.result()
                if self.purges.since(started, cid=cid):
                    proc.kill()
                    await exited
                    return None
        finally:
            exited.cancel()

    @staticmethod
    def _discard(folder: Path) -> None:
        """Remove a killed child's partial output (when nobody else has taken over)."""
        _unless_locked(folder, clear)

    async def close(self) -> None:
        """Stop this worker's transcodes (server shutdown): children are killed, the
        partial output discarded, and the next request starts over."""
        for task in list(self.jobs.values()):
            task.cancel()
        for task in list(self.jobs.values()):
            try:
                await task
            except BaseException:
                pass


def _remove(folder: Path) -> None:
    """Remove what a purged transcode left, unless a new transcode has taken it over."""
    if folder.exists():
        _unless_locked(folder, lambda f: shutil.rmtree(f, ignore_errors=True))


def settle(video_dir: Path, cids: set[str], timeout: float = SETTLE_SECONDS) -> None:
    """After a purge of ``cids``: wait until none of their transcodes runs (the worker
    running one stops it when it sees the tombstone) and remove what is left."""
    deadline = time.monotonic() + timeout
    for cid in cids:
        folder = video_dir / cid
        while Transcodes._locked(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        _remove(folder)
