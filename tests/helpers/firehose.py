"""Firehose frames made in code, and a stand-in firehose (a websocket server in a thread of
the test process) for the attacks a real PDS never makes: malformed frames, CAR slices that
lie about their CIDs, error frames, ``#info OutdatedCursor``.

Frames are built with libipld's DAG-CBOR encoder; CAR slices with multiformats' varints.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

from atcdn.core import cid as cids
from libipld import encode_dag_cbor
from multiformats import varint
from websockets.asyncio.server import ServerConnection, serve

DAG_CBOR_SHA256 = bytes([0x01, 0x71, 0x12, 0x20])
RAW_SHA256 = bytes([0x01, 0x55, 0x12, 0x20])
TIME = "2026-01-01T00:00:00.000Z"


def link(blob_cid: str) -> bytes:
    """A blob CID string as the binary link libipld encodes (tag 42)."""
    return RAW_SHA256 + cids.parse(blob_cid)


def blob(blob_cid: str, mime: str = "image/jpeg", size: int = 1000) -> dict[str, Any]:
    return {"$type": "blob", "ref": link(blob_cid), "mimeType": mime, "size": size}


def block(value: Any) -> tuple[bytes, bytes]:
    """(CID, bytes) of a DAG-CBOR block."""
    data = encode_dag_cbor(value)
    return DAG_CBOR_SHA256 + hashlib.sha256(data).digest(), data


def car(blocks: list[tuple[bytes, bytes]]) -> bytes:
    header = encode_dag_cbor({"roots": [blocks[0][0]] if blocks else [], "version": 1})
    out = varint.encode(len(header)) + header
    for cid, data in blocks:
        out += varint.encode(len(cid) + len(data)) + cid + data
    return out


def frame(kind: str, body: dict[str, Any]) -> bytes:
    return encode_dag_cbor({"op": 1, "t": kind}) + encode_dag_cbor(body)


def error_frame(error: str, message: str = "") -> bytes:
    return encode_dag_cbor({"op": -1}) + encode_dag_cbor({"error": error, "message": message})


def commit(seq: int, repo: str, records: dict[str, Any], *, deletes: tuple[str, ...] = (),
           lie: bool = False) -> bytes:
    """A #commit creating ``records`` (path -> record) and deleting ``deletes``. ``lie``:
    each block's bytes are swapped for other bytes under the same CID."""
    blocks, ops = [], []
    commit_cid, commit_data = block({"did": repo, "version": 3, "rev": f"r{seq}"})
    blocks.append((commit_cid, commit_data))
    for path, record in records.items():
        cid, data = block(record)
        if lie:
            data = encode_dag_cbor({**record, "text": "something else"})
        blocks.append((cid, data))
        ops.append({"action": "create", "path": path, "cid": cid})
    ops += [{"action": "delete", "path": path, "cid": None} for path in deletes]
    return frame("#commit", {"seq": seq, "repo": repo, "rev": f"r{seq}", "since": None,
                             "commit": commit_cid, "blocks": car(blocks), "ops": ops,
                             "blobs": [], "rebase": False, "tooBig": False, "time": TIME})


def post(*blob_cids: str, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": TIME,
            "embed": {"$type": "app.bsky.embed.images",
                      "images": [{"alt": "", "image": blob(c, mime)} for c in blob_cids]}}


def account(seq: int, did: str, active: bool, status: str | None = None) -> bytes:
    body: dict[str, Any] = {"seq": seq, "did": did, "time": TIME, "active": active}
    if status:
        body["status"] = status
    return frame("#account", body)


class StandinFirehose:
    """A stand-in subscribeRepos: serves ``frames`` (``(seq, bytes)``; seq orders them and
    is compared with the client's cursor) after a subscriber's cursor, or from the live tail
    without one. ``cursors`` records the cursor of every connection."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes | str]] = []
        self.cursors: list[int | None] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None
        self._close_after: set[int] = set()
        self._sent_once: set[int] = set()

    def add(self, seq: int, data: bytes | str, *, then_close: bool = False) -> None:
        """Publish a frame; ``then_close``: send it once (to the next connection to reach
        it), then close that connection (as after an error frame)."""
        assert self._loop is not None

        async def append() -> None:
            assert self._changed is not None
            async with self._changed:
                self.frames.append((seq, data))
                if then_close:
                    self._close_after.add(len(self.frames) - 1)
                    self._sent_once.add(len(self.frames) - 1)
                self._changed.notify_all()

        asyncio.run_coroutine_threadsafe(append(), self._loop).result(5)

    async def _serve_one(self, ws: ServerConnection) -> None:
        assert self._changed is not None and ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        self.cursors.append(cursor)
        sent = 0 if cursor is not None else len(self.frames)  # no cursor: the live tail
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.frames) > sent)
                pending = list(enumerate(self.frames))[sent:]
            for index, (seq, data) in pending:
                sent = index + 1
                if index in self._close_after:  # sent once, to one connection, then closes
                    self._close_after.discard(index)
                    await ws.send(data)
                    await ws.close()
                    return
                if (cursor is None or seq > cursor) and index not in self._sent_once:
                    await ws.send(data)

    @contextmanager
    def running(self) -> Iterator[StandinFirehose]:
        started = threading.Event()
        stop: list[asyncio.Future] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Condition()
            async with serve(self._serve_one, "127.0.0.1", 0) as server:
                port = server.sockets[0].getsockname()[1]
                self.url = f"ws://127.0.0.1:{port}"
                done = self._loop.create_future()
                stop.append(done)
                started.set()
                await done

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        assert started.wait(10)
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(stop[0].set_result, None)
            thread.join(10)
