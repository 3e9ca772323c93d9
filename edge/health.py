"""The edge's health routes: liveness apart from readiness.

- ``/health/live``: 200 while the process serves requests; for a supervisor deciding
  whether to restart the edge. It looks at nothing else.
- ``/health`` and ``/health/ready``: readiness, for load balancers, Route53 health checks
  and operators. 200 ``{"status": "ok"}`` when the edge can serve misses; 503
  ``{"status": "degraded", "reasons": [...]}`` (with Retry-After) when it cannot, i.e.
  when the origin does not answer its own ``/health``. Cache hits still work then, so a
  load balancer that fails open when every edge is degraded (Route53 does) loses nothing.

The origin is probed at most once per ``interval`` seconds per worker, with a short
timeout, and concurrent health requests share one probe.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PROBE_TIMEOUT = 2.0


class OriginProbe:
    """A cached check that the origin answers ``/health`` with 200."""

    def __init__(self, client: httpx.AsyncClient, interval: float,
                 timeout: float = PROBE_TIMEOUT) -> None:
        self.client = client
        self.interval = interval
        self.timeout = timeout
        self._reasons: list[str] = []
        self._checked = -float("inf")
        self._lock = asyncio.Lock()

    async def reasons(self) -> list[str]:
        """Why the edge is not ready (empty when it is)."""
        if time.monotonic() - self._checked < self.interval:
            return self._reasons
        async with self._lock:
            if time.monotonic() - self._checked >= self.interval:
                self._reasons = await self._probe()
                self._checked = time.monotonic()
        return self._reasons

    async def _probe(self) -> list[str]:
        origin = str(self.client.base_url).rstrip("/")
        try:
            response = await self.client.get("/health", timeout=self.timeout)
        except httpx.TimeoutException:
            return [f"origin {origin} did not answer /health within {self.timeout:g} s"]
        except (httpx.HTTPError, OSError) as exc:
            return [f"origin {origin} is unreachable: {type(exc).__name__}"]
        if response.status_code != 200:
            return [f"origin {origin} /health answered HTTP {response.status_code}"]
        return []


def health_routes(probe: OriginProbe, retry_after: int = 5) -> list[Route]:
    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def ready(request: Request) -> Response:
        reasons = await probe.reasons()
        if reasons:
            return JSONResponse({"status": "degraded", "reasons": reasons}, 503,
                                headers={"Cache-Control": "no-store",
                                         "Retry-After": str(retry_after)})
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    return [Route("/health", ready, methods=["GET", "HEAD"]),
            Route("/health/ready", ready, methods=["GET", "HEAD"]),
            Route("/health/live", live, methods=["GET", "HEAD"])]
