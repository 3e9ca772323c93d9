"""Origin processes for tests: the fs or s3 backend, as real ``atcdn origin serve`` servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT, TOKEN
from tests.servers import Process, atcdn, free_port


class Origin:
    """A running origin: its URL, data directory and process (to kill or restart)."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], log: Path) -> None:
        self.data_dir = data_dir
        self.env = {"ATCDN_ORIGIN_TOKEN": TOKEN, **env}
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Process | None = None

    def start(self) -> None:
        self.proc = Process(
            atcdn("origin", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                  "--data-dir", str(self.data_dir)),
            env=self.env, log=self.log, cwd=ROOT)
        self.proc.wait_http(self.url + "/health")

    def stop(self, sig: int | None = None) -> None:
        if self.proc is not None:
            self.proc.stop() if sig is None else self.proc.stop(sig)
            self.proc = None


@contextmanager
def running_origin(tmp: Path, *, backend: str = "fs", seaweed=None,
                   env: Mapping[str, str] | None = None) -> Iterator[Origin]:
    """Start an origin on ``backend`` ("fs" or "s3", the latter in a fresh bucket)."""
    full_env = dict(env or {})
    if backend == "s3":
        full_env.update(seaweed.origin_env(f"atcdn-{uuid.uuid4().hex[:12]}"))
    origin = Origin(tmp / "origin", full_env, tmp / "origin.log")
    origin.start()
    try:
        yield origin
    finally:
        origin.stop()
