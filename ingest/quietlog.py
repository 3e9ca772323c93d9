"""Warnings a flood cannot turn into a log flood: each kind of problem is logged when it
first happens, then at most once per ``interval`` with how many were not logged."""

from __future__ import annotations

import logging
import time


class QuietLog:
    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        if len(self._last) > 10_000:  # kinds are bounded labels; this is a backstop
            self._last.clear()
        self._last[kind] = now
        skipped = self._quiet.pop(kind, 0)
        suffix = f" ({skipped} more like it not logged)" if skipped else ""
        self.logger.warning(message + suffix, *args)
