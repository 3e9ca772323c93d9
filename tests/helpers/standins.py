"""Stand-ins for the edge's upstreams, run as real HTTP processes in tests.

One small Starlette app plays the origin (``/blob/{cid}``), a PDS (``getBlob``), a PLC
directory (``/{did}``) and a did:web host (``/.well-known/did.json``), all serving from
a directory of files named by CID or DID. Every request is appended to
``requests.log`` there, so tests can count what reached the upstream. With
``STANDIN_FLIP=1`` it flips one byte of every blob it serves (a corrupting origin);
``STANDIN_FAIL_FIRST=N`` answers the first N origin GETs of each stored blob with 503;
``STANDIN_DELAY=S`` waits S seconds before answering an origin GET; a file
``hang/<cid>`` makes getBlob of that CID never answer; a file ``unhealthy`` makes
``/health`` answer 503 (an origin whose store failed). A file
``dids/{name}.stall`` holding a number makes the PLC directory wait that many seconds
before answering for that DID (a hostile, slow PLC entry).

Hostile PDS and DID-host modes (the attacks of issue 9): ``STANDIN_GZIP=1`` sends blobs and
DID documents with ``Content-Encoding: gzip`` whatever the client asked for;
``STANDIN_BOMB=N`` answers every getBlob with N zero bytes, gzipped (a decompression bomb,
~1000:1); ``STANDIN_DRIP=S`` sends blobs and DID documents 1 KiB at a time, S seconds
apart (a stalling host); ``STANDIN_STALL_AFTER=B`` sends the first B bytes of a blob, then
stalls for ``STANDIN_STALL`` seconds (default 30) before the rest. The headers of every
request are appended to ``headers.log`` (one JSON object a line).

    python -m tests.standins --port P --dir D
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TOKEN = "test-token"


def build(root: Path) -> Starlette:
    flip = os.environ.get("STANDIN_FLIP") == "1"
    fail_first = int(os.environ.get("STANDIN_FAIL_FIRST", "0"))
    delay = float(os.environ.get("STANDIN_DELAY", "0"))
    gzipped = os.environ.get("STANDIN_GZIP") == "1"
    bomb_size = int(os.environ.get("STANDIN_BOMB", "0"))
    drip = float(os.environ.get("STANDIN_DRIP", "0"))
    stall_after = int(os.environ.get("STANDIN_STALL_AFTER", "-1"))
    stall = float(os.environ.get("STANDIN_STALL", "30"))
    failures: dict[str, int] = {}
    bomb: list[bytes] = []  # compressed once, on first use

    def log(request: Request) -> None:
        with open(root / "requests.log", "a") as fh:
            fh.write(f"{request.method} {request.url.path}?{request.url.query}\n")
        with open(root / "headers.log", "a") as fh:
            fh.write(json.dumps(dict(request.headers)) + "\n")

    async def pieces(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1024):
            if start:
                await asyncio.sleep(drip)
            yield data[start:start + 1024]

    async def stalled(data: bytes) -> AsyncIterator[bytes]:
        yield data[:stall_after]
        await asyncio.sleep(stall)
        yield data[stall_after:]

    def hostile(data: bytes, media_type: str, headers: dict[str, str]) -> Response:
        """``data`` as the hostile modes send it (gzipped, dripped, stalled), else plain."""
        if gzipped:
            data = gzip.compress(data, compresslevel=1)
            headers = {**headers, "content-encoding": "gzip"}
        if drip:
            return StreamingResponse(pieces(data), media_type=media_type, headers=headers)
        if stall_after >= 0:
            return StreamingResponse(stalled(data), media_type=media_type, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    def blob_bytes(cid: str) -> bytes | None:
        path = root / "blobs" / cid
        if not path.is_file():
            return None
        data = path.read_bytes()
        if flip and data:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return data

    async def origin_blob(request: Request) -> Response:
        log(request)
        cid = request.path_params["cid"]
        if request.method == "PUT":
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return JSONResponse({"error": "Unauthorized", "message": "token"}, 401)
            (root / "blobs").mkdir(exist_ok=True)
            (root / "blobs" / cid).write_bytes(await request.body())
            return JSONResponse({"cid": cid}, 201)
        known = (root / "blobs" / cid).is_file()
        if known and failures.setdefault(cid, 0) < fail_first:
            failures[cid] += 1
            return JSONResponse({"error": "Unavailable", "message": "try again"}, 503)
        if delay:
            await asyncio.sleep(delay)
        if (root / "takedowns" / cid).exists():
            return JSONResponse({"error": "TakenDown", "message": cid}, 451)
        if (root / "origin-empty").exists():
            return JSONResponse({"error": "BlobNotFound", "message": cid}, 404)
        data = blob_bytes(cid)
        if data is None:
            return JSONResponse({"error": "BlobNotFound", "message": cid}, 404)
        return Response(data, media_type="application/octet-stream")

    async def get_blob(request: Request) -> Response:
        log(request)
        if bomb_size:
            if not bomb:
                bomb.append(gzip.compress(bytes(bomb_size), compresslevel=9))
            return Response(bomb[0], media_type="application/octet-stream",
                            headers={"content-encoding": "gzip"})
        cid = request.query_params.get("cid", "")
        if (root / "hang" / cid).exists():  # a PDS that never answers for this blob
            await asyncio.sleep(3600)
        data = blob_bytes(cid)
        if data is None:
            return JSONResponse({"error": "InvalidRequest", "message": "Blob not found"}, 400)
        return hostile(data, "application/octet-stream", {"cache-control": "private"})

    async def did_doc(request: Request) -> Response:
        log(request)
        name = request.path_params.get("did", "did-web")
        stall = root / "dids" / f"{name}.stall"
        if stall.is_file():
            await asyncio.sleep(float(stall.read_text()))
        path = root / "dids" / f"{name}.json"
        if not path.is_file():
            return JSONResponse({"message": "DID not registered"}, 404)
        return hostile(path.read_bytes(), "application/json", {})

    async def health(request: Request) -> Response:
        if (root / "unhealthy").exists():
            return JSONResponse({"error": "Unavailable", "message": "store failed"}, 503)
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/health", health),
        Route("/blob/{cid}", origin_blob, methods=["GET", "PUT"]),
        Route("/handoff/{cid}", origin_blob, methods=["PUT"]),  # an edge's hand-off
        Route("/xrpc/com.atproto.sync.getBlob", get_blob),
        Route("/.well-known/did.json", did_doc),
        Route("/{did}", did_doc),
    ])


def requests(root: Path) -> list[str]:
    log = root / "requests.log"
    return log.read_text().splitlines() if log.exists() else []


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.dir), host="127.0.0.1", port=args.port, log_level="warning")
