"""The BlobStore contract, run against both backends (filesystem and a real SeaweedFS)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest
from atcdn.core.cid import compute
from atcdn.core.settings import OriginSettings
from atcdn.origin.store import BlobStore, FileStore, open_store, sweep


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "fs":
        return open_store(OriginSettings(data_dir=tmp_path))
    seaweed = request.getfixturevalue("seaweed")
    bucket = f"store-{os.urandom(6).hex()}"
    env = seaweed.origin_env(bucket)
    return open_store(OriginSettings(
        data_dir=tmp_path, store="s3", s3_endpoint=env["ATCDN_ORIGIN_S3_ENDPOINT"],
        s3_bucket=bucket, s3_access_key=seaweed.access_key, s3_secret_key=seaweed.secret_key))


async def put(store: BlobStore, data: bytes, chunk: int = 65536) -> tuple[str, bool]:
    staging = store.stage()
    for i in range(0, len(data), chunk):
        await staging.write(data[i:i + chunk])
    await staging.finish()
    cid = staging.verifier.cid
    return cid, await store.commit(staging, cid)


async def read(store: BlobStore, cid: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(cid, start, end)])


def tmp_files(store: BlobStore) -> list[Path]:
    return list(store.tmp_dir.iterdir())


def test_round_trip_is_byte_identical(store: BlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several CHUNKs and a ragged end

    async def main() -> None:
        cid, created = await put(store, data)
        assert cid == compute(data) and created
        assert await store.size(cid) == len(data)
        assert await read(store, cid) == data
        assert await store.head(cid, 100) == data[:100]

    anyio.run(main)
    assert tmp_files(store) == []


def test_second_commit_reports_existing(store: BlobStore) -> None:
    async def main() -> None:
        cid, created = await put(store, b"hello")
        again, created_again = await put(store, b"hello")
        assert (again, created, created_again) == (cid, True, False)
        assert await read(store, cid) == b"hello"

    anyio.run(main)


@pytest.mark.parametrize(("start", "end"), [(0, 1), (5, 105), (1000, None), (999_999, None),
                                            (1_048_570, 1_048_600)])
def test_ranged_reads(store: BlobStore, start: int, end: int | None) -> None:
    data = os.urandom(2 * 1024 * 1024)

    async def main() -> None:
        cid, _ = await put(store, data)
        assert await read(store, cid, start, end) == data[start:end]

    anyio.run(main)


def test_unknown_blob_has_no_size(store: BlobStore) -> None:
    assert anyio.run(store.size, compute(b"never stored")) is None


def test_empty_blob(store: BlobStore) -> None:
    async def main() -> None:
        cid, created = await put(store, b"")
        assert created and await store.size(cid) == 0
        assert await read(store, cid) == b"" and await store.head(cid) == b""

    anyio.run(main)


def test_discarded_staging_leaves_nothing(store: BlobStore) -> None:
    async def main() -> str:
        staging = store.stage()
        await staging.write(b"half a blob")
        await staging.finish()
        staging.discard()
        return staging.verifier.cid

    cid = anyio.run(main)
    assert anyio.run(store.size, cid) is None
    assert tmp_files(store) == []


def test_commit_verifies_the_bytes_itself(store: BlobStore) -> None:
    """The store, not its caller, checks the CID: wrong bytes are never stored."""
    from atcdn.core.errors import AtcdnError

    claimed = compute(b"what the caller says it is")

    async def main() -> None:
        staging = store.stage()
        await staging.write(b"something else entirely")
        with pytest.raises(AtcdnError) as caught:
            await store.commit(staging, claimed)
        assert (caught.value.status, caught.value.error) == (422, "CidMismatch")

    anyio.run(main)
    assert anyio.run(store.size, claimed) is None
    assert tmp_files(store) == []


def test_concurrent_writers_of_one_cid(store: BlobStore) -> None:
    data = os.urandom(2 * 1024 * 1024)
    results: list[bool] = []

    def writer() -> None:
        results.append(anyio.run(put, store, data)[1])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and any(results)
    if isinstance(store, FileStore):
        assert results.count(True) == 1  # link() lets exactly one writer create it
    assert anyio.run(read, store, compute(data)) == data
    assert tmp_files(store) == []


def test_commit_is_all_or_nothing_on_disk(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    cid, _ = anyio.run(put, store, b"x" * 100_000)
    path = store.path(cid)
    assert path.read_bytes() == b"x" * 100_000
    assert path.relative_to(tmp_path / "blobs").parts == (cid[7:9], cid[9:11], cid)


def test_sweep_removes_only_orphaned_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    live = store.stage()  # holds its lock
    orphan = store.tmp_dir / "upload-dead.part"
    orphan.write_bytes(b"partial")
    old = os.stat(orphan).st_mtime - 3600
    os.utime(orphan, (old, old))
    os.utime(live.path, (old, old))
    assert sweep(store.tmp_dir) == 1
    assert not orphan.exists() and live.path.exists()
    live.discard()
