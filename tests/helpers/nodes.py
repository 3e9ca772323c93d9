"""Real nodes for tests: origins (fs or s3 backend), edges and the stand-in upstream."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers.env import ADMIN_TOKEN, ROOT, TOKEN
from tests.helpers.servers import Process, atcdn, free_port


class Origin:
    """A running origin: its URL, data directory and process (to kill or restart)."""

    def __init__(self, data_dir: Path, env: Mapping[str, str], log: Path) -> None:
        self.data_dir = data_dir
        self.env = {"ATCDN_ORIGIN_TOKEN": TOKEN, "ATCDN_ORIGIN_ADMIN_TOKEN": ADMIN_TOKEN, **env}
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


@contextmanager
def running_origins(tmp: Path, count: int, env: Mapping[str, str]) -> Iterator[list[Origin]]:
    """``count`` origins (``tmp/o0``, ``tmp/o1``, ...) with the same ``env`` (several origins
    over one store, or each over its own); all stopped afterwards."""
    nodes = [Origin(tmp / f"o{n}", env, tmp / f"o{n}.log") for n in range(count)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


class Edge:
    """A running ``atcdn edge serve`` process."""

    def __init__(self, proc: Process, url: str, cache_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.cache_dir = cache_dir

    def metric(self, name: str) -> float:
        return metric(self.url, name)


def metric(url: str, name: str) -> float:
    """Sum of every sample of ``name`` on a node's /metrics (all labels, all workers)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_edge(origin_url: str | Sequence[str], cache_dir: Path, log: Path, *,
               workers: int = 1, server: str | None = None,
               env: dict[str, str] | None = None, port: int | None = None) -> Edge:
    """Start an edge on ``port`` or a free one (private networks allowed, test tokens set),
    under ``server`` or else the default server; several origins: ``--origin`` each."""
    port = port or free_port()
    origins = [origin_url] if isinstance(origin_url, str) else list(origin_url)
    proc = Process(
        atcdn("edge", "serve", "--host", "127.0.0.1", "--port", str(port),
              *(arg for url in origins for arg in ("--origin", url)),
              "--cache-dir", str(cache_dir),
              "--workers", str(workers), *(["--server", server] if server else [])),
        env={"ATCDN_ALLOW_PRIVATE_NETWORKS": "1", "ATCDN_EDGE_ORIGIN_TOKEN": TOKEN,
             "ATCDN_EDGE_PURGE_TOKEN": TOKEN, **(env or {})},
        log=log, cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/health/live")  # started; /health is readiness (origin up)
    except BaseException:
        proc.stop()
        raise
    return Edge(proc, url, cache_dir)


class Upstream:
    """A running tests/helpers/standins.py process: origin, PDS, PLC and did:web host in one."""

    def __init__(self, proc: Process, url: str, root: Path) -> None:
        self.proc = proc
        self.url = url
        self.root = root

    def add_blob(self, data: bytes) -> str:
        from atcdn.core.cid import compute

        cid = compute(data)
        (self.root / "blobs").mkdir(exist_ok=True)
        (self.root / "blobs" / cid).write_bytes(data)
        return cid

    def add_did(self, did: str, pds_url: str, name: str | None = None) -> None:
        doc = {"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                       "serviceEndpoint": pds_url}]}
        (self.root / "dids").mkdir(exist_ok=True)
        (self.root / "dids" / f"{name or did}.json").write_text(json.dumps(doc))

    def stall_did(self, did: str, seconds: float) -> None:
        """Make the PLC directory answer for ``did`` only after ``seconds``."""
        (self.root / "dids").mkdir(exist_ok=True)
        (self.root / "dids" / f"{did}.stall").write_text(str(seconds))

    def requests(self) -> list[str]:
        from tests.helpers.standins import requests

        return requests(self.root)


def start_upstream(root: Path, env: dict[str, str] | None = None) -> Upstream:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = Process([sys.executable, "-m", "tests.helpers.standins", "--port", str(port),
                    "--dir", str(root)],
                   env=env, log=root.parent / f"{root.name}.log", cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health")
    return Upstream(proc, url, root)
