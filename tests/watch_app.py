"""A test app: the /watch routes over a directory of blobs named by CID.

Stands in for the edge server's fetch + verify + cache layer (a directory source is all
watch_routes needs: a path to a verified blob). Also serves a player page and hls.js for
tests/test_video_player.py from the same origin. Run it as a real server process:
``python -m tests.watch_app PORT`` with ATCDN_EDGE_* settings and
ATCDN_TEST_BLOBS (the directory), ATCDN_TEST_STATIC (optional static directory).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from atcdn.serve import run
from atcdn.settings import EdgeSettings
from edge.watch import watch_routes
from origin.cid import compute


async def _health(request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _metrics(request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app() -> Starlette:
    blobs = Path(os.environ["ATCDN_TEST_BLOBS"])

    async def get_source(did: str, cid: str) -> Path:
        path = blobs / cid
        if not path.is_file():
            raise FileNotFoundError(cid)
        return path

    routes = [Route("/health", _health), Route("/metrics", _metrics),
              *watch_routes(get_source, EdgeSettings())]
    static = os.environ.get("ATCDN_TEST_STATIC")
    if static:
        routes.append(Mount("/static", StaticFiles(directory=static)))
    return Starlette(routes=routes)


def add_blob(blobs: Path, data: bytes) -> str:
    """Store ``data`` in the blob directory under its CID; return the CID."""
    cid = compute(data)
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / cid).write_bytes(data)
    return cid


if __name__ == "__main__":
    settings = EdgeSettings()
    run("tests.watch_app:create_app", host="127.0.0.1", port=int(sys.argv[1]),
        workers=settings.workers, server=settings.server)
