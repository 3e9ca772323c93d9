"""``GET /status``: a node's status page (core/status.py) with its history
(core/history.py), and the task that records that history while the node runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from atcdn.core.history import Recorder
from atcdn.core.status import Sample, page, parse_metrics, public_config
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

HISTORY_FILE = "status-history.json"


class StatusPage:
    def __init__(self, kind: str, directory: Path, render: Callable[[], bytes],
                 settings: Mapping[str, object],
                 problems: Callable[[], Awaitable[list[str]]] | None = None,
                 interval: float = 10.0) -> None:
        self.kind = kind
        self.render = render
        self.config = public_config({k: str(v) if isinstance(v, Path) else v
                                     for k, v in settings.items()})
        self.problems = problems
        self.recorder = Recorder(directory / HISTORY_FILE, self.samples, interval)

    def samples(self) -> list[Sample]:
        return parse_metrics(self.render().decode())

    def route(self) -> Route:
        return Route("/status", self.answer, methods=["GET"])

    async def answer(self, request: Request) -> HTMLResponse:
        samples = await asyncio.to_thread(self.samples)
        problems = await self.problems() if self.problems else []
        html = page(self.kind, samples, self.recorder.history(), self.config, problems)
        return HTMLResponse(html, headers={"cache-control": "no-store",
                                           "content-security-policy": "default-src 'none';"
                                           " style-src 'unsafe-inline'"})

    def start(self) -> asyncio.Task:
        """Record the history in the background (every worker; one writes each point)."""
        return asyncio.get_running_loop().create_task(self.recorder.run())
