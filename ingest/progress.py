"""Backfill progress: a rich progress bar (counts, bytes, ETA) on a terminal, plain log
lines otherwise, and the closing summary."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import IO, Protocol

from atcdn.ingest.metrics import SKIPS

log = logging.getLogger("atcdn.ingest")
LOG_EVERY = 10.0  # seconds between plain progress lines


class Tally:
    """Outcomes of a backfill, grouped as its summary reports them."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.bytes = 0
        self.accounts_failed = 0

    def add(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> dict[str, int]:
        o = self.outcomes
        failed = {k: v for k, v in o.items()
                  if k not in SKIPS and k not in ("stored", "pds_refused")}
        return {"stored": o["stored"], "already_present": o["present"] + o["duplicate"],
                "refused_by_pds": o["pds_refused"],
                "skipped": sum(o[k] for k in SKIPS if k not in ("present", "duplicate")),
                "failed": sum(failed.values()), "accounts_failed": self.accounts_failed,
                "bytes_stored": self.bytes}

    def line(self) -> str:
        s = self.summary()
        return (f"stored {s['stored']}, already present {s['already_present']}, "
                f"refused by the PDS {s['refused_by_pds']}, skipped {s['skipped']}, "
                f"failed {s['failed']} ({_size(s['bytes_stored'])})")


class Reporter(Protocol):
    def found(self, blobs: int) -> None: ...
    def account(self, did: str, number: int, total: int) -> None: ...
    def advance(self, tally: Tally) -> None: ...
    def close(self, tally: Tally) -> None: ...


class PlainReporter:
    def __init__(self) -> None:
        self.total = 0
        self._last = 0.0

    def found(self, blobs: int) -> None:
        self.total += blobs

    def account(self, did: str, number: int, total: int) -> None:
        log.info("backfill: account %d/%d %s", number, total, did)

    def advance(self, tally: Tally) -> None:
        now = time.monotonic()
        if now - self._last >= LOG_EVERY:
            self._last = now
            log.info("backfill: %d/%d blobs listed so far: %s", tally.done, self.total,
                     tally.line())

    def close(self, tally: Tally) -> None:
        pass


class RichReporter:
    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[size]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[detail]}"),
            console=Console(file=stream), transient=False)
        self.task = self.progress.add_task("backfill", total=0, size="0 B", detail="")
        self.progress.start()

    def found(self, blobs: int) -> None:
        total = self.progress.tasks[0].total or 0
        self.progress.update(self.task, total=total + blobs)

    def account(self, did: str, number: int, total: int) -> None:
        self.progress.update(self.task, description=f"account {number}/{total}")

    def advance(self, tally: Tally) -> None:
        self.progress.update(self.task, completed=tally.done, size=_size(tally.bytes),
                             detail=f"stored {tally.outcomes['stored']}")

    def close(self, tally: Tally) -> None:
        self.advance(tally)
        self.progress.stop()


def make_reporter(stream: IO[str] = sys.stderr) -> Reporter:
    return RichReporter(stream) if stream.isatty() else PlainReporter()


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"
