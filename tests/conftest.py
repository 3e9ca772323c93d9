"""Shared fixtures: the corpus and real origin, edge, upstream, SeaweedFS and moto
processes. The helpers behind them live in tests/helpers/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.env import CORPUS, need, need_tool
from tests.helpers.nodes import (
    Edge,
    Upstream,
    running_origin,
    start_edge,
    start_upstream,
)
from tests.helpers.pictures import DID
from tests.helpers.servers import Process, free_port


@pytest.fixture(scope="session")
def corpus() -> Path:
    need(CORPUS.is_dir(), f"corpus not found at {CORPUS}")
    return CORPUS


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[str]:
    """A real origin process with a filesystem store; yields its base URL."""
    with running_origin(tmp_path) as node:
        yield node.url


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


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = start_upstream(tmp_path / "upstream")
    try:
        yield up
    finally:
        up.proc.stop()


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """Start PDS + PLC stand-ins with the given STANDIN_* modes (tests/helpers/standins.py);
    each names itself the PDS of ``tests.helpers.pictures.DID``."""
    started: list[Upstream] = []

    def start(**env: str) -> Upstream:
        up = start_upstream(tmp_path / f"pds{len(started)}", env=env)
        up.add_did(DID, up.url)
        started.append(up)
        return up

    yield start
    for up in started:
        up.proc.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 endpoint for the whole session (skipped without ``weed``)."""
    from tests.helpers.seaweed import run_seaweed

    yield from run_seaweed(need_tool("weed"), tmp_path_factory.mktemp("seaweed"))


@pytest.fixture(scope="module")
def seaweed_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS cluster, each part its own process (master, three volume servers with
    two copies of every blob, filer, S3 gateway), for one module: its tests kill parts."""
    from tests.helpers.seaweed import run_seaweed_cluster

    yield from run_seaweed_cluster(need_tool("weed"), tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real moto_server process (stand-in for AWS); yields the env that points boto3 at it."""
    binary = need_tool("moto_server")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = Process([binary, "-H", "127.0.0.1", "-p", str(port)], log=log)
    url = f"http://127.0.0.1:{port}"
    env = {"ATCDN_AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "ATCDN_AWS_REGION": "us-east-1"}
    try:
        proc.wait_http(url + "/moto-api/")
        yield env
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def pds(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The reference PDS and its PLC (tests/pds), for a whole module (it boots slowly)."""
    from tests.helpers.pds import reference_pds

    with reference_pds(tmp_path_factory.mktemp("pds")) as peer:
        yield peer


@pytest.fixture(scope="module")
def module_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real origin process shared by a module's tests; yields the Origin."""
    with running_origin(tmp_path_factory.mktemp("origin")) as node:
        yield node
