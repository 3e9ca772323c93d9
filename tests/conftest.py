"""Shared fixtures: the corpus, strict mode, and real origin/edge processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 endpoint for the whole session (skipped without ``weed``)."""
    from tests.seaweed import run_seaweed

    yield from run_seaweed(need_tool("weed"), tmp_path_factory.mktemp("seaweed"))
