"""The edge's origins: one client each, the ring that gives every CID a home origin, and
whether each origin is up.

With one origin nothing changes: every fetch goes to it. With several, each CID goes to
its home origin (core/ring.py: the same home on every edge given the same URLs), so only
that origin ever pulls it from a PDS. Every ``origin_check_interval`` seconds each worker
asks every origin for ``/health``; ``origin_down_after`` failures in a row (a refused,
reset or timed-out connection, or a 5xx, on a check; a refused, reset or timed-out
connection on a fetch) mark an origin down, and its CIDs go to the next origin on their
ring order until one check passes again, when they go home. docs/origins.md.

Readiness (``/health``): ready while at least one origin passed its latest check. With
one origin that check runs when ``/health`` is asked (at most every
``health_probe_interval`` seconds), as it always has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from atcdn.core.accesslog import current_id
from atcdn.core.limits import FetchLimits
from atcdn.core.ring import Ring, up_first
from atcdn.core.settings import EdgeSettings
from atcdn.edge.metrics import Metrics

log = logging.getLogger("atcdn.edge")


def origin_client(url: str, settings: EdgeSettings) -> httpx.AsyncClient:
    limits = FetchLimits.from_settings(settings)
    return httpx.AsyncClient(base_url=url,
                             timeout=httpx.Timeout(limits.timeout, connect=limits.connect_timeout),
                             trust_env=False, limits=httpx.Limits(max_connections=64),
                             event_hooks={"request": [_pass_request_id]})


async def _pass_request_id(request: httpx.Request) -> None:
    """The origin logs our request's ID, so one ID follows a miss through both logs."""
    rid = current_id()
    if rid is not None:
        request.headers["x-request-id"] = rid


class Origin:
    """One origin as this worker sees it."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.client = client
        self.up = True  # routing state: down after ``origin_down_after`` failures in a row
        self.failures = 0  # in a row, checks and connections alike
        self.reason = ""  # why the latest check or connection failed ("" once one passed)
        self.checked = -float("inf")  # monotonic time of the latest check
        self.changed = time.monotonic()  # when ``up`` last flipped

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"url": self.url, "state": "up" if self.up else "down",
                                 "for_seconds": round(time.monotonic() - self.changed, 1)}
        if self.reason:
            state["reason"] = self.reason
        return state


class Origins:
    def __init__(self, settings: EdgeSettings, metrics: Metrics) -> None:
        self.nodes = {url: Origin(url, origin_client(url, settings))
                      for url in settings.origins}
        self.ring = Ring(self.nodes)
        self.metrics = metrics
        self.interval = settings.origin_check_interval
        self.timeout = settings.origin_check_timeout
        self.down_after = settings.origin_down_after
        self.probe_interval = settings.health_probe_interval
        self._lock = asyncio.Lock()
        for url in self.nodes:
            metrics.origin_up.labels(url).set(1)
            metrics.origin_failovers.labels(url, "down")
            metrics.origin_failovers.labels(url, "failed")

    @property
    def several(self) -> bool:
        return len(self.nodes) > 1

    def home(self, cid: str) -> Origin:
        return self.nodes[self.ring.home(cid)]

    def candidates(self, cid: str) -> list[Origin]:
        """The origins to ask for ``cid``, best first: its home, unless that is down, then
        the next ones on its ring order (those that are up before those that are not)."""
        down = {url for url, node in self.nodes.items() if not node.up}
        return [self.nodes[url] for url in up_first(self.ring.order(cid), down)]

    def failed(self, origin: Origin, reason: str) -> None:
        """A check failed, or a connection to ``origin`` did."""
        origin.failures += 1
        origin.reason = reason
        if origin.up and origin.failures >= self.down_after and self.several:
            origin.up = False
            origin.changed = time.monotonic()
            self.metrics.origin_up.labels(origin.url).set(0)
            log.warning("origin %s is down (%s): its CIDs go to the next origin", origin.url,
                        reason)

    def passed(self, origin: Origin) -> None:
        origin.failures = 0
        origin.reason = ""
        if not origin.up:
            origin.up = True
            origin.changed = time.monotonic()
            self.metrics.origin_up.labels(origin.url).set(1)
            log.warning("origin %s is up again: its CIDs go home", origin.url)

    async def check(self, origin: Origin) -> None:
        """One ``GET /health`` of ``origin``."""
        reason = ""
        try:
            response = await origin.client.get("/health", timeout=self.timeout)
            if response.status_code >= 500:
                reason = f"origin {origin.url} /health answered HTTP {response.status_code}"
        except httpx.TimeoutException:
            reason = f"origin {origin.url} did not answer /health within {self.timeout:g} s"
        except (httpx.HTTPError, OSError) as exc:
            reason = f"origin {origin.url} is unreachable: {type(exc).__name__}"
        origin.checked = time.monotonic()
        if reason:
            self.failed(origin, reason)
        else:
            self.passed(origin)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(node) for node in self.nodes.values()))

    async def run(self) -> None:
        """Check every origin every ``interval`` seconds, until cancelled."""
        while True:
            started = time.monotonic()
            await self.check_all()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> asyncio.Task | None:
        """The background checks (only with several origins: with one, there is nowhere
        else to send a CID, and readiness checks it when asked)."""
        return asyncio.get_running_loop().create_task(self.run()) if self.several else None

    async def reasons(self) -> list[str]:
        """Why the edge cannot serve misses: every origin failed its latest check. With
        one origin, that check is made here when the last is ``health_probe_interval``
        old (concurrent callers share it)."""
        if not self.several:
            node = next(iter(self.nodes.values()))
            if time.monotonic() - node.checked >= self.probe_interval:
                async with self._lock:
                    if time.monotonic() - node.checked >= self.probe_interval:
                        await self.check(node)
        reasons = [node.reason for node in self.nodes.values()]
        return reasons if all(reasons) else []

    async def problems(self) -> list[str]:
        """For the status page: the readiness reasons, else every origin that is down."""
        return await self.reasons() or [f"origin {node.url} is down: {node.reason}"
                                         for node in self.nodes.values() if not node.up]

    def states(self) -> list[dict[str, Any]]:
        return [node.state() for node in self.nodes.values()]

    async def aclose(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                await node.client.aclose()
