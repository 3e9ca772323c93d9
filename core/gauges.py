"""Gauges computed when /metrics is scraped (what the node holds now, not what it did),
added to a server's exposition beside its counters."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

STARTED_ENV = "ATCDN_STARTED_AT"

Reading = tuple[str, str, float]  # name, help, value


def mark_start() -> None:
    """In a server's parent process, before its workers start: the node's start time."""
    os.environ[STARTED_ENV] = repr(time.time())


def start_time() -> float:
    return float(os.environ.get(STARTED_ENV) or _PROCESS_START)


_PROCESS_START = time.time()


class Gauges:
    """A prometheus_client collector of readings taken at scrape time."""

    def __init__(self, read: Callable[[], list[Reading]]) -> None:
        self.read = read

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        readings = [("atcdn_node_start_time_seconds", "When this node started (Unix time)",
                     start_time()), *self.read()]
        for name, text, value in readings:
            yield GaugeMetricFamily(name, text, value=value)
