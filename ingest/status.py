"""``/health`` and ``/metrics`` of a running ``atcdn ingest`` process, served by uvicorn
inside the process's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import uvicorn
from atcdn.ingest.metrics import IngestMetrics
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def status_app(health: Callable[[], tuple[bool, dict[str, Any]]],
               metrics: IngestMetrics) -> Starlette:
    """``health()`` returns (healthy, details): 200 or 503 with the details as JSON."""

    async def health_route(request: Request) -> Response:
        healthy, details = health()
        return JSONResponse(details, 200 if healthy else 503)

    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    return Starlette(routes=[Route("/health", health_route), Route("/metrics", metrics_route)])


async def serve_status(app: Starlette, host: str, port: int) -> None:
    """Serve until the task is cancelled."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            access_log=False)
    server = uvicorn.Server(config)
    # The process handles its own signals (a clean stop saves the cursor).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    await server.serve()
