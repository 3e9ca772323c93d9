"""Access logs and request IDs (core/accesslog.py), directly and in real origin and edge
processes; the edge's liveness and readiness (edge/health.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path

import httpx
from atcdn.core.accesslog import AccessLog, Answer, note
from atcdn.core.cid import compute
from atcdn.core.settings import LogSettings

from tests.helpers.env import TOKEN
from tests.helpers.nodes import running_origin, start_edge
from tests.helpers.pictures import photo

DID = "did:plc:" + "a" * 24


SEEN: list[str] = []  # the paths tiny_app answered


async def tiny_app(scope, receive, send) -> None:
    SEEN.append(scope["path"])
    if scope["path"] == "/boom":
        raise RuntimeError("kaboom")
    note(cache="memory")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def logged(fmt: str, *requests: tuple[str, dict],
           hits=None) -> tuple[list[httpx.Response], str]:
    app = AccessLog(tiny_app, LogSettings(format=fmt), hits=hits)
    handler = next(h for h in logging.getLogger("atcdn").handlers if getattr(h, "atcdn", 0))
    stream = io.StringIO()
    handler.setStream(stream)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get(path, headers=headers) for path, headers in requests]

    answers = asyncio.run(go())
    app.lines.flush()  # lines are written in batches (at most FLUSH_SECONDS late)
    return answers, stream.getvalue()


def test_request_ids_are_echoed_generated_or_kept():
    answers, _ = logged("text", ("/a", {}), ("/a", {"x-request-id": "lb-1234.abc"}),
                        ("/a", {"x-request-id": "bad id\twith spaces"}),
                        ("/a", {"x-request-id": "x" * 65}))
    generated, kept, spaced, long = (a.headers["x-request-id"] for a in answers)
    assert len(generated) == 16 and int(generated, 16) >= 0
    assert kept == "lb-1234.abc"
    assert spaced != "bad id\twith spaces" and len(spaced) == 16
    assert len(long) == 16


def test_text_access_line():
    answers, text = logged("text", ("/img/x?w=1", {"x-request-id": "r1"}))
    assert answers[0].text == "hello"
    line = text.strip()
    assert line.count("\n") == 0 and "atcdn.access" in line
    for part in ("method=GET", "path=/img/x?w=1", "status=200", "bytes=5", "cache=memory",
                 "client=192.0.2.7", "id=r1", "ms="):
        assert part in line, line


def test_a_url_cannot_forge_log_lines():
    _, text = logged("text", ("/img/a%0Afake%20INFO%20line", {}))
    assert text.count("\n") == 1 and "path=/img/a%0Afake%20INFO%20line " in text


def test_json_access_line():
    _, text = logged("json", ("/a", {"x-request-id": "r2"}))
    record = json.loads(text.strip())
    assert record["method"] == "GET" and record["path"] == "/a" and record["status"] == 200
    assert record["bytes"] == 5 and record["cache"] == "memory" and record["id"] == "r2"
    assert record["level"] == "INFO" and record["time"].endswith("Z") and record["ms"] >= 0


def test_a_failure_is_logged_with_its_request_and_answered_500():
    answers, text = logged("text", ("/boom", {"x-request-id": "r3"}))
    assert answers[0].status_code == 500 and answers[0].json()["error"] == "InternalError"
    assert answers[0].headers["x-request-id"] == "r3"
    failure = next(line for line in text.splitlines() if "request failed" in line)
    assert "method=GET" in failure and "path=/boom" in failure and "id=r3" in failure
    assert "RuntimeError: kaboom" in text  # the traceback follows its context line
    assert any("status=500" in line and "id=r3" in line for line in text.splitlines())


def test_hits_are_sent_by_the_access_log_itself_with_an_id_and_a_line():
    """The edge's hit path (edge/front.py ``Front.hit``) hands whole answers to the access
    log, which sends them without calling the app."""
    def hits(scope) -> Answer | None:
        if scope["path"] == "/hot":
            return Answer(200, [(b"content-type", b"text/plain")], b"hot!!!")
        return None

    SEEN.clear()
    answers, text = logged("text", ("/hot", {"x-request-id": "h1"}), ("/hot", {}),
                           ("/cold", {}), hits=hits)
    hot, fresh, cold = answers
    assert hot.text == "hot!!!" and hot.headers["x-request-id"] == "h1"
    assert len(fresh.headers["x-request-id"]) == 16 and fresh.text == "hot!!!"
    assert cold.text == "hello" and SEEN == ["/cold"]  # the app never saw the hits
    lines = text.splitlines()
    assert any("path=/hot" in line and "status=200" in line and "bytes=6" in line
               and "cache=memory" in line and "id=h1" in line for line in lines), lines
    assert sum("path=/hot" in line for line in lines) == 2
    assert any("path=/cold" in line and "status=200" in line for line in lines), lines


def test_pending_lines_are_written_before_the_app_reports_shutdown():
    """Lines wait up to FLUSH_SECONDS in a batch; a worker that stops must not lose them
    (multiprocessing's workers end with os._exit, which skips atexit)."""
    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await tiny_app(scope, receive, send)

    access = AccessLog(app, LogSettings())
    access.lines.FLUSH_SECONDS = 3600  # only the shutdown can write the line
    handler = next(h for h in logging.getLogger("atcdn").handlers if getattr(h, "atcdn", 0))
    stream = io.StringIO()
    handler.setStream(stream)
    at_shutdown: list[str] = []

    async def go() -> None:
        transport = httpx.ASGITransport(app=access, client=("192.0.2.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/last", headers={"x-request-id": "r9"})).text == "hello"
        assert stream.getvalue() == ""  # still in the batch
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive():
            return next(messages)

        async def send(message):
            if message["type"] == "lifespan.shutdown.complete":
                at_shutdown.append(stream.getvalue())

        await access({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(go())
    assert "path=/last" in at_shutdown[0] and "id=r9" in at_shutdown[0]


def _lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def test_real_edge_and_origin_log_requests_and_report_health(tmp_path: Path):
    with running_origin(tmp_path, env={"ATCDN_LOG_FORMAT": "json"}) as origin:
        data = photo(300, 200)
        cid = compute(data)
        assert httpx.put(f"{origin.url}/blob/{cid}", content=data,
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        edge = start_edge(origin.url, tmp_path / "cache", tmp_path / "edge.log", workers=1,
                          env={"ATCDN_LOG_FORMAT": "json", "ATCDN_PDS_FALLBACK": "0",
                               "ATCDN_EDGE_HEALTH_PROBE_INTERVAL": "0.2"})
        try:
            url = f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg"
            first = httpx.get(url, headers={"X-Request-Id": "op-first"}, timeout=30)
            second = httpx.get(url, timeout=30)
            assert first.status_code == second.status_code == 200
            assert first.headers["x-request-id"] == "op-first"
            ours = second.headers["x-request-id"]
            assert ours != "op-first"
            def both() -> list[dict] | None:
                found = [r for r in _lines(tmp_path / "edge.log")
                         if r.get("id") in ("op-first", ours)]
                return found if len(found) == 2 else None

            lines = _wait_for(both)
            by_id = {r["id"]: r for r in lines}
            assert by_id["op-first"]["cache"] == "miss" and by_id[ours]["cache"] == "memory"
            assert by_id[ours]["bytes"] == len(second.content) and by_id[ours]["status"] == 200
            assert by_id[ours]["path"] == f"/img/avatar/plain/{DID}/{cid}@jpeg"
            missing = httpx.get(f"{edge.url}/blob/{DID}/{compute(b'nothing')}", timeout=30)
            assert missing.status_code == 404
            assert _wait_for(lambda: any(r.get("status") == 404 and r.get("path", "").endswith(
                compute(b"nothing")) for r in _lines(tmp_path / "edge.log")))
            # The origin logs too, in the same format, and the miss under the edge's ID.
            origin_log = _lines(tmp_path / "origin.log")
            assert any(r.get("path", "").startswith(f"/blob/{cid}") and r["status"] == 201
                       for r in origin_log)
            fetch = next(r for r in origin_log if r.get("id") == "op-first")
            assert fetch["path"].startswith(f"/blob/{cid}?did=") and fetch["status"] == 200
            assert fetch["path"].count("?") == 1  # the query once, raw path or not

            # Health: ready while the origin answers; degraded (503, why) once it is gone,
            # while liveness stays 200; ready again when it is back.
            assert httpx.get(f"{edge.url}/health").json() == {"status": "ok"}
            origin.stop()
            time.sleep(0.3)
            for path in ("/health", "/health/ready"):
                down = httpx.get(edge.url + path, timeout=10)
                assert down.status_code == 503, down.text
                body = down.json()
                assert body["status"] == "degraded" and origin.url in body["reasons"][0]
                assert int(down.headers["retry-after"]) > 0
            assert httpx.get(f"{edge.url}/health/live").status_code == 200
            assert httpx.get(url, timeout=30).status_code == 200  # hits still served
            origin.start()
            assert _wait_for(lambda: httpx.get(f"{edge.url}/health").status_code == 200)
        finally:
            edge.proc.stop()
