"""Prometheus metrics of the origin, correct across several worker processes.

``atcdn origin serve`` calls ``prepare_multiprocess_dir`` before the server starts its
workers: each worker then writes its counters to files in ``<data_dir>/metrics`` and
``/metrics`` sums them (prometheus_client's multiprocess mode). Without that variable
(an app built in-process), the counters are per process.

``prometheus_client`` reads ``PROMETHEUS_MULTIPROC_DIR`` when it is first imported, so
this module imports it lazily.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from atcdn.core.accesslog import Tally
from atcdn.core.errors import AtcdnError
from atcdn.core.gauges import Gauges, mark_start
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
KNOWN_ROUTES = frozenset({"/health", "/metrics", "/status", "/blob", "/admin/takedown",
                          "/admin/restore", "/admin/feed", "/xrpc/com.atproto.sync.getBlob"})


def prepare_multiprocess_dir(directory: Path) -> None:
    """Start a server's metrics afresh in ``directory`` (call in the server's parent
    process, before workers start). The origin and the edge both use it."""
    mark_start()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


def route_of(path: str) -> str:
    """A bounded label for a request path."""
    if path.startswith("/blob/"):
        return "/blob/{cid}"
    if path.startswith("/handoff/"):
        return "/handoff/{cid}"
    return path if path in KNOWN_ROUTES else "unmatched"


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # Per-process mode keeps its own registry so building two apps never clashes.
        own = None if self.multiprocess else CollectorRegistry()
        self.registry = own
        self.requests = Counter("atcdn_origin_requests", "HTTP requests",
                                ["method", "route", "status"], registry=own)
        self.bytes_in = Counter("atcdn_origin_bytes_in", "blob bytes received", registry=own)
        self.bytes_out = Counter("atcdn_origin_bytes_out", "body bytes sent", registry=own)
        self.verification_failures = Counter(
            "atcdn_origin_verification_failures", "bodies that did not match their CID",
            registry=own)
        self.quota_refusals = Counter(
            "atcdn_origin_quota_refusals",
            "hand-offs and pulls refused: a pulled-tier quota was used up", registry=own)
        self.pds_pulls = Counter(
            "atcdn_origin_pds_pulls",
            "getBlob requests of the shield (pds_pull) by result: an HTTP status, or blocked,"
            " timeout, unreachable, error", ["result"], registry=own)
        self.pull_bytes = Counter(
            "atcdn_origin_pull_bytes", "bytes the shield received from PDSes (on the wire)",
            registry=own)

    @contextlib.contextmanager
    def verifying(self) -> Iterator[None]:
        """Around a store's commit: count a body that did not match its CID (422)."""
        try:
            yield
        except AtcdnError as exc:
            if exc.error == "CidMismatch":
                self.verification_failures.inc()
            raise

    # -- core.download.Meter: the shield's pulls (origin/shield.py) ------------------

    def fetched(self, source: str, result: str, seconds: float | None) -> None:
        self.pds_pulls.labels(result).inc()

    def verification_failed(self, source: str) -> None:
        self.verification_failures.inc()

    def received(self, source: str, size: int) -> None:
        self.pull_bytes.inc(size)

    def render(self, gauges: Gauges | None = None) -> tuple[bytes, str]:
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            generate_latest,
            multiprocess,
        )

        registry = CollectorRegistry()
        if self.registry is None:
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_Registered(self.registry))
        if gauges is not None:
            registry.register(gauges)
        return generate_latest(registry), CONTENT_TYPE_LATEST


class _Registered:
    """Another registry's metrics, as a collector (per-process mode)."""

    def __init__(self, registry) -> None:  # type: ignore[no-untyped-def]
        self.registry = registry

    def collect(self):  # type: ignore[no-untyped-def]
        return self.registry.collect()


class MetricsMiddleware:
    """Counts every request by method, route and status, and the body bytes sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tally = Tally()

        async def counting_send(message: Message) -> None:
            tally.see(message)
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(scope["method"], route_of(scope["path"]),
                                         str(tally.status or 500)).inc()
            if tally.sent:
                self.metrics.bytes_out.inc(tally.sent)
