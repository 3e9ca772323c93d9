"""Shared fixtures: the corpus, strict mode, and real origin/edge processes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, atcdn, free_port

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("ATCDN_CORPUS", ROOT.parent / "shared" / "corpus"))
# CI sets ATCDN_TEST_STRICT=1: what would be skipped on a bare machine must run there.
STRICT = os.environ.get("ATCDN_TEST_STRICT") == "1"
TOKEN = "test-token"


def need(condition: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) when a prerequisite is missing."""
    if not condition:
        if STRICT:
            pytest.fail(f"strict mode: {reason}")
        pytest.skip(reason)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed")
    return path  # type: ignore[return-value]


@pytest.fixture(scope="session")
def corpus() -> Path:
    need(CORPUS.is_dir(), f"corpus not found at {CORPUS}")
    return CORPUS


def corpus_files(*folders: str) -> list[Path]:
    """Files of the named corpus folders, for parametrize (empty when absent)."""
    files: list[Path] = []
    for folder in folders:
        if (CORPUS / folder).is_dir():
            files += sorted(p for p in (CORPUS / folder).iterdir() if p.is_file())
    return files


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[str]:
    """A real origin process with a filesystem store; yields its base URL."""
    port = free_port()
    proc = Process(
        atcdn("origin", "serve", "--host", "127.0.0.1", "--port", str(port),
              "--data-dir", str(tmp_path / "origin")),
        env={"ATCDN_ORIGIN_TOKEN": TOKEN}, log=tmp_path / "origin.log", cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/health")
        yield url
    finally:
        proc.stop()


class Edge:
    """A running ``atcdn edge serve`` process."""

    def __init__(self, proc: Process, url: str, cache_dir: Path) -> None:
        self.proc = proc
        self.url = url
        self.cache_dir = cache_dir

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` on /metrics (all labels, all workers)."""
        text = httpx.get(self.url + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_edge(origin_url: str, cache_dir: Path, log: Path, *, workers: int = 1,
               server: str = "granian", env: dict[str, str] | None = None) -> Edge:
    """Start an edge on a free port (private networks allowed, test tokens set)."""
    port = free_port()
    proc = Process(
        atcdn("edge", "serve", "--host", "127.0.0.1", "--port", str(port),
              "--origin", origin_url, "--cache-dir", str(cache_dir),
              "--workers", str(workers), "--server", server),
        env={"ATCDN_ALLOW_PRIVATE_NETWORKS": "1", "ATCDN_EDGE_ORIGIN_TOKEN": TOKEN,
             "ATCDN_EDGE_PURGE_TOKEN": TOKEN, **(env or {})},
        log=log, cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/health")
    except BaseException:
        proc.stop()
        raise
    return Edge(proc, url, cache_dir)


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator:
    """Start edges with ``edge_factory(origin_url, **kw)``; all are stopped afterwards."""
    started: list[Edge] = []

    def factory(origin_url: str, *, cache_dir: Path | None = None, **kwargs) -> Edge:
        n = len(started)
        edge = start_edge(origin_url, cache_dir or tmp_path / f"edge{n}", tmp_path / f"edge{n}.log",
                          **kwargs)
        started.append(edge)
        return edge

    yield factory
    for edge in started:
        edge.proc.stop()


@pytest.fixture
def edge(origin: str, edge_factory) -> Edge:
    """A real edge process in front of the real ``origin`` fixture."""
    return edge_factory(origin)


class Upstream:
    """A running tests/standins.py process: origin, PDS, PLC and did:web host in one."""

    def __init__(self, proc: Process, url: str, root: Path) -> None:
        self.proc = proc
        self.url = url
        self.root = root

    def add_blob(self, data: bytes) -> str:
        from origin.cid import compute

        cid = compute(data)
        (self.root / "blobs").mkdir(exist_ok=True)
        (self.root / "blobs" / cid).write_bytes(data)
        return cid

    def add_did(self, did: str, pds_url: str, name: str | None = None) -> None:
        doc = {"id": did, "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                       "serviceEndpoint": pds_url}]}
        (self.root / "dids").mkdir(exist_ok=True)
        (self.root / "dids" / f"{name or did}.json").write_text(json.dumps(doc))

    def requests(self) -> list[str]:
        from tests.standins import requests

        return requests(self.root)


def start_upstream(root: Path, env: dict[str, str] | None = None) -> Upstream:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = Process([sys.executable, "-m", "tests.standins", "--port", str(port),
                    "--dir", str(root)],
                   env=env, log=root.parent / f"{root.name}.log", cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health")
    return Upstream(proc, url, root)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = start_upstream(tmp_path / "upstream")
    try:
        yield up
    finally:
        up.proc.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 endpoint for the whole session (skipped without ``weed``)."""
    from tests.seaweed import run_seaweed

    yield from run_seaweed(need_tool("weed"), tmp_path_factory.mktemp("seaweed"))
