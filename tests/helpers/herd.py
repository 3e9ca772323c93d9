"""A thundering herd: ``n`` connections opened first, then the same GET sent on all of
them at once, so every request is in flight together (a cold request answered before the
last one was sent would make the herd smaller than claimed). Raw HTTP/1.1 with h11
(httpx's own parser): a pooled client spends more time on its pool than the servers on
the requests. Used by the edge benchmark and the fleet test."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections import Counter
from urllib.parse import urlsplit

import h11


async def _one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       request: bytes, conn: h11.Connection) -> tuple[int, bytes]:
    writer.write(request)
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(1 << 16))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            writer.close()
            return status, bytes(body)


async def herd(host: str, port: int, path: str, n: int, timeout: float) -> dict:
    """``n`` requests for ``path`` on one server at once."""
    return await stampede([f"http://{host}:{port}{path}"] * n, timeout)


async def stampede(urls: list[str], timeout: float) -> dict:
    """One request per URL (``http://host:port/path``), all in flight together;
    outcomes (status or error name), distinct bodies and latencies."""
    targets = [urlsplit(url) for url in urls]

    async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port)

    conns = await asyncio.gather(*(connect(t.hostname or "", t.port or 80) for t in targets),
                                 return_exceptions=True)
    outcomes: Counter[str] = Counter()
    bodies: Counter[str] = Counter()
    ready = [(c, t) for c, t in zip(conns, targets) if not isinstance(c, BaseException)]
    for c in conns:
        if isinstance(c, BaseException):
            outcomes[f"connect {type(c).__name__}"] += 1

    tasks = []
    started = time.perf_counter()
    for (reader, writer), target in ready:
        conn = h11.Connection(h11.CLIENT)
        request = conn.send(h11.Request(method="GET", target=target.path or "/",
                                        headers=[("Host", target.netloc)]))
        request += conn.send(h11.EndOfMessage())
        tasks.append(asyncio.ensure_future(
            asyncio.wait_for(_one_request(reader, writer, request, conn), timeout)))
    latencies = []

    async def timed(task: asyncio.Future) -> None:
        try:
            status, body = await task
            outcomes[str(status)] += 1
            bodies[hashlib.sha256(body).hexdigest()[:16]] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none hidden
            outcomes[type(exc).__name__] += 1
        latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(timed(t) for t in tasks))
    for (_, writer), _target in ready:
        writer.close()
    latencies.sort()
    return {
        "requests": len(urls),
        "outcomes": dict(outcomes),
        "distinct_bodies": len(bodies),
        "first_s": round(latencies[0], 3) if latencies else None,
        "median_s": round(statistics.median(latencies), 3) if latencies else None,
        "last_s": round(latencies[-1], 3) if latencies else None,
    }
