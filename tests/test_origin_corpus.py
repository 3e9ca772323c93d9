"""Every corpus file round-trips through a real origin under its computed CID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.core.mime import sniff

from tests.helpers.env import CORPUS, TOKEN, corpus_files
from tests.helpers.nodes import running_origin


@pytest.fixture(scope="module")
def client(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with (running_origin(tmp_path_factory.mktemp("origin-corpus")) as origin,
          httpx.Client(base_url=origin.url, timeout=60.0) as client):
        yield client


FOLDERS = sorted(p.name for p in CORPUS.iterdir() if p.is_dir() and p.name != "LICENSES") \
    if CORPUS.is_dir() else []
FILES = corpus_files(*FOLDERS)


def test_corpus_is_present(corpus: Path) -> None:
    assert FILES, f"no files in the folders of {corpus}"


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_corpus_file_round_trips(path: Path, client: httpx.Client) -> None:
    data = path.read_bytes()
    cid = compute(data)
    stored = client.put(f"/blob/{cid}", content=data,
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert stored.status_code in (200, 201), stored.text
    assert stored.json()["cid"] == cid
    got = client.get(f"/blob/{cid}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == sniff(data[:8192])
    if data:
        tail = client.get(f"/blob/{cid}", headers={"Range": f"bytes={len(data) // 2}-"})
        assert tail.status_code == 206 and tail.content == data[len(data) // 2:]
