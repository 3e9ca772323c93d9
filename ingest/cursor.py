"""Which firehose position is safe to save (pure code, no I/O).

Events arrive in ``seq`` order but their blobs finish in any order. The cursor may move
past an event only when that event and every event before it are fully handled, so a
restart from the saved cursor re-handles everything that was still in flight (a replay,
which is idempotent) and never skips anything.
"""

from __future__ import annotations

from collections import deque


class Pending:
    """One event still being handled: its ``seq`` and how many of its jobs remain."""

    __slots__ = ("seq", "remaining")

    def __init__(self, seq: int, remaining: int) -> None:
        self.seq = seq
        self.remaining = remaining


class CursorTracker:
    def __init__(self, start: int | None = None) -> None:
        self.durable: int | None = start
        self._pending: deque[Pending] = deque()

    def begin(self, seq: int, jobs: int) -> Pending:
        """Note event ``seq`` with ``jobs`` unfinished jobs (0: it is done already)."""
        entry = Pending(seq, jobs)
        self._pending.append(entry)
        self._advance()
        return entry

    def finish(self, entry: Pending) -> None:
        """One job of ``entry`` is durably handled (stored, skipped or given up on)."""
        entry.remaining -= 1
        self._advance()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _advance(self) -> None:
        while self._pending and self._pending[0].remaining <= 0:
            seq = self._pending.popleft().seq
            if self.durable is None or seq > self.durable:
                self.durable = seq
