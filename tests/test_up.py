"""``atcdn up``: origin and edge on localhost, a private token, a sample image, clean stop."""

from __future__ import annotations

import io
import os
import re
import signal
import stat
import time
from pathlib import Path

import httpx
from atcdn.core.cid import compute
from PIL import Image

from tests.helpers.env import ROOT
from tests.helpers.servers import Process, atcdn, free_port


def wait_for_text(proc: Process, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in proc.tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc.tail()


def test_up_serves_and_stops(tmp_path: Path) -> None:
    origin_port, edge_port = free_port(), free_port()
    origin, edge = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{edge_port}"
    proc = Process(atcdn("up", "--data-dir", str(tmp_path / "data"), "--origin-port",
                         str(origin_port), "--edge-port", str(edge_port)),
                   log=tmp_path / "up.log", cwd=ROOT)
    try:
        proc.wait_http(edge + "/health", timeout=60)
        token_file = tmp_path / "data" / "origin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()

        # The printed sample URL works: a real JPEG, resized by the edge.
        printed = wait_for_text(proc, "Ctrl-C")
        assert f"{origin}/blob" in printed  # ready-to-paste store commands
        sample = re.search(rf"{re.escape(edge)}/img/feed_thumbnail/plain/\S+@jpeg", printed)
        assert sample, printed
        answer = httpx.get(sample.group(0), timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(answer.content)).size == (1600, 1200)
        # How to see it: the status pages, atcdn status and atcdn report, and they answer.
        assert f"{edge}/status" in printed and f"{origin}/status" in printed
        assert f"status {origin} {edge}" in printed
        assert f"report --node {origin} --node {edge}" in printed
        assert httpx.get(f"{edge}/status").status_code == 200

        # A pushed blob comes back from the origin and out of the edge.
        out = io.BytesIO()
        Image.new("RGB", (640, 480), (200, 30, 30)).save(out, "JPEG")
        data = out.getvalue()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.put(f"{origin}/blob/{compute(data)}", content=data,
                         headers=auth).status_code == 201
        assert httpx.get(f"{origin}/blob/{compute(data)}").content == data
        did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
        thumb = httpx.get(f"{edge}/img/avatar_thumbnail/plain/{did}/{compute(data)}@webp",
                          timeout=30)
        assert thumb.status_code == 200
        assert Image.open(io.BytesIO(thumb.content)).size == (128, 128)

        # The POST the banner shows answers what the banner says: 201, then 200, with
        # the flat fields and an uploadBlob-style ref.
        assert '{"cid", "size", "mimeType", "blob"}' in printed
        assert '{"$type": "blob", "ref": {"$link": cid}, "mimeType", "size"}' in printed
        png = io.BytesIO()
        Image.new("RGB", (32, 32), (0, 90, 200)).save(png, "PNG")
        cid, size = compute(png.getvalue()), len(png.getvalue())
        expected = {"cid": cid, "size": size, "mimeType": "image/png",
                    "blob": {"$type": "blob", "ref": {"$link": cid},
                             "mimeType": "image/png", "size": size}}
        for status in (201, 200):
            posted = httpx.post(f"{origin}/blob", content=png.getvalue(), headers=auth)
            assert (posted.status_code, posted.json()) == (status, expected)

        os.kill(proc.pid, signal.SIGTERM)  # the up process alone, not its group
        proc.popen.wait(20)
        for url in (origin, edge):
            try:
                httpx.get(url + "/health", timeout=1.0)
                raise AssertionError(f"{url} still answering after atcdn up stopped")
            except httpx.TransportError:
                pass
    finally:
        proc.stop()


def test_readme_quick_start_is_what_ci_runs() -> None:
    """README's two commands: install and run the CDN; install and run the tests,
    exactly as .ci/run does."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/atcdn up",
        ci[-1],
    ]


def test_up_answers_upstream_failures_502_and_says_fallback(tmp_path: Path) -> None:
    """The first-run bug: an unknown CID with the PDS fallback on a machine without DNS
    answered 500. Upstream failures are 502/504 with Retry-After, on every route."""
    origin_port, edge_port = free_port(), free_port()
    edge = f"http://127.0.0.1:{edge_port}"
    proc = Process(atcdn("up", "--data-dir", str(tmp_path / "data"), "--origin-port",
                         str(origin_port), "--edge-port", str(edge_port)),
                   env={"ATCDN_PLC_URL": "https://plc.invalid"}, log=tmp_path / "up.log",
                   cwd=ROOT)
    try:
        proc.wait_http(edge + "/health", timeout=60)
        printed = wait_for_text(proc, "Ctrl-C")
        assert "PDS fallback: on" in printed and "https://plc.invalid" in printed, printed
        assert "atcdn cid photo.jpg" in printed and "import sys" not in printed
        did, cid = "did:plc:ewvi7nxzyoun6zhxrhs64oiz", compute(b"never stored anywhere")
        for path in (f"/img/avatar/plain/{did}/{cid}@jpeg", f"/blob/{did}/{cid}",
                     f"/watch/{did}/{cid}/playlist.m3u8"):
            answer = httpx.get(edge + path, headers={"X-Request-Id": "up-502"}, timeout=60)
            assert answer.status_code in (502, 504), (path, answer.status_code, answer.text)
            assert int(answer.headers["retry-after"]) > 0, path
            assert answer.json()["error"] != "InternalError"
        log = (tmp_path / "data" / "logs" / "edge.log").read_text()
        assert "id=up-502" in log and "status=502" in log, log[-2000:]
        assert "request failed" not in log  # no 500 path was taken
    finally:
        proc.stop()


def test_up_refuses_a_taken_port_with_one_line(tmp_path: Path) -> None:
    """`atcdn up --origin-port` against a foreign server: one line, nothing started."""
    import socket

    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        proc = Process(atcdn("up", "--data-dir", str(tmp_path / "data"), "--origin-port",
                             str(port), "--edge-port", str(free_port())),
                       log=tmp_path / "up.log", cwd=ROOT)
        try:
            proc.popen.wait(30)
        finally:
            proc.stop()
    out = proc.tail()
    assert proc.popen.returncode != 0 and "Traceback" not in out, out
    assert f"port {port}" in out and "already in use" in out, out
    assert not (tmp_path / "data" / "logs" / "origin.log").exists()  # nothing started


def test_up_knows_a_server_that_is_not_its_origin(origin: str) -> None:
    """Behind the port check: a server that answers /health but refuses up's token."""
    import pytest
    from atcdn.cli.up import store_sample

    with pytest.raises(RuntimeError, match="not the origin atcdn up started"):
        store_sample(origin, "not-the-token")
