"""The edge's health routes: liveness apart from readiness.

- ``/health/live``: 200 while the process serves requests; for a supervisor deciding
  whether to restart the edge. It looks at nothing else.
- ``/health`` and ``/health/ready``: readiness, for load balancers, Route53 health checks
  and operators. 200 ``{"status": "ok"}`` when the edge can serve misses; 503
  ``{"status": "degraded", "reasons": [...]}`` (with Retry-After) when it cannot, i.e.
  when no origin answers its own ``/health``. Cache hits still work then, so a load
  balancer that fails open when every edge is degraded (Route53 does) loses nothing.
  With several origins the answer also lists each one's state (``"origins"``: url,
  ``up``/``down``, for how long, and why), 200 while any of them is up.

How and when origins are checked: edge/origins.py.
"""

from __future__ import annotations

from typing import Any

from atcdn.edge.origins import Origins
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

NO_STORE = {"Cache-Control": "no-store"}


def health_routes(origins: Origins, retry_after: int = 5) -> list[Route]:
    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    async def ready(request: Request) -> Response:
        reasons = await origins.reasons()
        body: dict[str, Any] = ({"status": "degraded", "reasons": reasons} if reasons
                                else {"status": "ok"})
        if origins.several:
            body["origins"] = origins.states()
        if reasons:
            return JSONResponse(body, 503, headers={**NO_STORE, "Retry-After": str(retry_after)})
        return JSONResponse(body, headers=NO_STORE)

    return [Route("/health", ready, methods=["GET", "HEAD"]),
            Route("/health/ready", ready, methods=["GET", "HEAD"]),
            Route("/health/live", live, methods=["GET", "HEAD"])]
