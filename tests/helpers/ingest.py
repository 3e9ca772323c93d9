"""``atcdn ingest follow`` as a real process for tests: start, kill -9, restart, read its
metrics and health."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers.env import ADMIN_TOKEN, ROOT, TOKEN
from tests.helpers.servers import Process, atcdn, free_port

# Quick to give up, so attack tests finish fast; polite limits stay at their defaults.
FAST = {"ATCDN_INGEST_RETRIES": "1", "ATCDN_INGEST_RETRY_BACKOFF": "0.1",
        "ATCDN_INGEST_READ_TIMEOUT": "2", "ATCDN_INGEST_FETCH_DEADLINE": "4",
        "ATCDN_INGEST_CURSOR_FLUSH_INTERVAL": "0.2"}


class Follower:
    def __init__(self, source: str, origin_url: str, data_dir: Path, *, plc_url: str,
                 env: dict[str, str] | None = None) -> None:
        self.source = source
        self.origin_url = origin_url
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"ATCDN_ORIGIN_TOKEN": TOKEN, "ATCDN_ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN,
                    "ATCDN_PLC_URL": plc_url,
                    "ATCDN_ALLOW_PRIVATE_NETWORKS": "1", **FAST, **(env or {})}
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: Process | None = None

    def start(self, wait_subscribed: bool = True) -> Follower:
        self.proc = Process(
            atcdn("ingest", "follow", "--from", self.source, "--origin", self.origin_url,
                  "--data-dir", str(self.data_dir), "--status-port", str(self.port)),
            env=self.env, log=self.log, cwd=ROOT)
        if wait_subscribed:
            self.proc.wait_http(self.url + "/health")
        return self

    def kill(self) -> None:
        """kill -9: no chance to save anything."""
        assert self.proc is not None
        self.proc.stop(signal.SIGKILL)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def metric(self, name: str, /, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            bare = series.split("{")[0]
            if bare != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def origin_status(origin_url: str, cid: str, did: str | None = None) -> int:
    params = {"did": did} if did else {}
    return httpx.get(f"{origin_url}/blob/{cid}", params=params, timeout=10).status_code
