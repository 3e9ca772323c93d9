"""``atcdn up``: starts a working origin, keeps a private token, stops its children."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import httpx

from origin.cid import compute
from tests.conftest import ROOT
from tests.servers import Process, atcdn, free_port


def test_up_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Process(atcdn("up", "--data-dir", str(tmp_path / "data"), "--origin-port", str(port),
                         "--edge-port", str(free_port())),
                   log=tmp_path / "up.log", cwd=ROOT)
    try:
        proc.wait_http(url + "/health")
        token_file = tmp_path / "data" / "origin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        data = os.urandom(1000)
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.put(f"{url}/blob/{compute(data)}", content=data,
                         headers=auth).status_code == 201
        assert httpx.get(f"{url}/blob/{compute(data)}").content == data
        deadline = time.monotonic() + 10
        while "curl" not in proc.tail() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"{url}/blob" in proc.tail()  # printed ready-to-paste commands
        os.kill(proc.pid, signal.SIGTERM)  # the up process alone, not its group
        proc.popen.wait(20)
        try:
            httpx.get(url + "/health", timeout=1.0)
            raise AssertionError("origin still answering after atcdn up stopped")
        except httpx.TransportError:
            pass
    finally:
        proc.stop()
