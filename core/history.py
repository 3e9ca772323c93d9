"""The status page's history: a point of the node's counters every ``INTERVAL`` seconds,
kept in a small JSON file beside the node's metrics so every worker process shows the
same charts and a restart keeps them (the file is bounded by ``HISTORY_POINTS``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from atcdn.core.files import write_atomic
from atcdn.core.status import History, Sample, point
from filelock import FileLock, Timeout

INTERVAL = 10.0


class Recorder:
    """Each worker runs ``run``; whichever holds the lock when a point is due adds it."""

    def __init__(self, path: Path, samples: Callable[[], list[Sample]],
                 interval: float = INTERVAL) -> None:
        self.path = path
        self.samples = samples
        self.interval = interval
        self.lock = FileLock(str(path) + ".lock")

    def history(self) -> History:
        try:
            return History.from_json(self.path.read_text())
        except FileNotFoundError:
            return History()

    def record(self, now: float | None = None) -> bool:
        """Add a point if one is due; False when another worker is at it or none is due."""
        now = time.time() if now is None else now
        try:
            with self.lock.acquire(timeout=0):
                history = self.history()
                if history.points and now - history.points[-1].at < self.interval * 0.9:
                    return False
                history.add(point(self.samples(), now))
                write_atomic(self.path, history.to_json())
                return True
        except Timeout:
            return False

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.record)
            await asyncio.sleep(self.interval)
