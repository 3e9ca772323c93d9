"""Prometheus metrics of an edge node, summed over its worker processes.

prometheus_client's multiprocess mode keeps each worker's values in mmapped files in
``{cache_dir}/metrics``; ``origin.metrics.prepare_multiprocess_dir`` (run once by the
server's parent process) empties it and exports ``PROMETHEUS_MULTIPROC_DIR``, which must
be set before prometheus_client is first imported, hence the imports inside functions.

Memory-tier hits are the hot path: they are tallied in plain ints and flushed into the
shared counters about once a second rather than touching mmapped values per request.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

from atcdn.core.gauges import Gauges

FLUSH_EVERY = 1.0


def use_dir(path: Path) -> None:
    """In a worker: make sure the multiprocess directory is set (uvicorn with 1 worker,
    tests building the app directly) before prometheus_client loads."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(path))


class Metrics:
    def __init__(self) -> None:
        import prometheus_client
        from prometheus_client import Counter, Histogram

        # Values live in the multiprocess files; registering them in the default registry
        # as well would only make a second app in one process fail (duplicate names).
        Counter = functools.partial(Counter, registry=None)  # noqa: N806
        Histogram = functools.partial(Histogram, registry=None)  # noqa: N806
        self.origin_fetches = Counter(
            "atcdn_edge_origin_fetches", "Blob fetches from the origin", ["result"])
        self.origin_requests = Counter(
            "atcdn_edge_origin_requests", "Blob requests to each origin (every attempt)",
            ["origin", "result"])
        self.origin_failovers = Counter(
            "atcdn_edge_origin_failovers",
            "Fetches of a CID whose home origin was down (reason=down) or whose connection to"
            " it failed (reason=failed), sent to the next origin", ["origin", "reason"])
        self.pds_fetches = Counter(
            "atcdn_edge_pds_fetches", "Blob fetches from a PDS (origin had no copy)", ["result"])
        self.bytes_received = Counter(
            "atcdn_edge_bytes_received", "Blob bytes received on the wire (before decoding)",
            ["source"])
        self.transforms = Counter("atcdn_edge_transforms", "Image transforms run", ["result"])
        self.verification_failures = Counter(
            "atcdn_edge_verification_failures", "Fetched bytes that did not match their CID",
            ["source"])
        self.cache_hits = Counter("atcdn_edge_cache_hits", "Cache hits", ["route", "tier"])
        self.cache_misses = Counter("atcdn_edge_cache_misses", "Cache misses", ["route"])
        self.bytes_served = Counter("atcdn_edge_bytes_served", "Response body bytes", ["route"])
        self.miss_bytes = Counter("atcdn_edge_cache_miss_bytes",
                                  "Response body bytes of cache misses (byte hit ratio:"
                                  " 1 - this / atcdn_edge_bytes_served)", ["route"])
        self.errors = Counter("atcdn_edge_errors", "Error responses", ["route", "status"])
        self.request_seconds = Histogram(
            "atcdn_edge_request_seconds", "Time to answer a request that missed memory",
            ["route", "outcome"])
        self.fetch_seconds = Histogram(
            "atcdn_edge_fetch_seconds", "Time to fetch and verify a blob", ["source"])
        self.transform_seconds = Histogram("atcdn_edge_transform_seconds", "Transform time")
        Gauge = functools.partial(prometheus_client.Gauge, registry=None,  # noqa: N806
                                  multiprocess_mode="livesum")
        self.memory_bytes = Gauge("atcdn_edge_memory_cache_bytes",
                                  "Bytes held by the memory tiers of all workers")
        self.origin_up = prometheus_client.Gauge(
            "atcdn_edge_origin_up", "1 while an origin is up for every worker, 0 once one"
            " worker marked it down", ["origin"], registry=None, multiprocess_mode="livemin")
        self.memory_entries = Gauge("atcdn_edge_memory_cache_entries",
                                    "Entries in the memory tiers of all workers")
        # Series an alert or a rate() must see at 0 before their first increment.
        for source in ("origin", "pds"):
            self.verification_failures.labels(source)
        self.pds_fetches.labels("200")
        for route in ("img", "blob", "watch"):
            for status in ("500", "502", "503", "504"):
                self.errors.labels(route, status)
        self._hits: dict[str, int] = {"img": 0, "blob": 0}
        self._bytes: dict[str, int] = {"img": 0, "blob": 0}
        self._flusher: asyncio.TimerHandle | None = None

    # -- core.download.Meter: the fetches of edge/fetch.py ----------------------------

    def fetched(self, source: str, result: str, seconds: float | None) -> None:
        counter = self.origin_fetches if source == "origin" else self.pds_fetches
        counter.labels(result).inc()
        if seconds is not None:
            self.fetch_seconds.labels(source).observe(seconds)

    def verification_failed(self, source: str) -> None:
        self.verification_failures.labels(source).inc()

    def received(self, source: str, size: int) -> None:
        self.bytes_received.labels(source).inc(size)

    def memory_hit(self, route: str, size: int) -> None:
        self._hits[route] += 1
        self._bytes[route] += size
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        self._flusher = None
        for route in self._hits:
            if self._hits[route]:
                self.cache_hits.labels(route, "memory").inc(self._hits[route])
                self.bytes_served.labels(route).inc(self._bytes[route])
                self._hits[route] = self._bytes[route] = 0

    def render(self, gauges: Gauges | None = None) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.flush()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if gauges is not None:
            registry.register(gauges)
        return generate_latest(registry)
