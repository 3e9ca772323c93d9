"""Adopted PDS blobstores (origin/adopted.py), on a layout planted the way the reference
PDS lays it out: on disk, and in a real SeaweedFS bucket. The scanner is driven by hand
here; tests/test_adopt_pds.py runs it against the reference PDS itself."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from atcdn.core.cid import compute
from atcdn.core.settings import OriginSettings
from atcdn.origin.adopted import Adopted, Holdings, ReadOnlyStore, Scanner
from atcdn.origin.store import open_store

ALICE = "did:plc:" + "a" * 24
BOB = "did:plc:" + "b" * 24
SHARED = b"\x89PNG\r\n\x1a\n" + os.urandom(5000)  # both accounts uploaded these bytes
BOBS = b"GIF89a" + os.urandom(3000)


class Planted:
    """A PDS blobstore the test writes into directly: the disk or a bucket."""

    def __init__(self, store: Adopted, put, move, delete) -> None:
        self.store = store
        self.put = put  # put(key, data) with key "blocks/<did>/<cid>", "tempt/..."
        self.move = move  # move(old_key, new_key)
        self.delete = delete
        self.reports: list[tuple[str, str, bool]] = []

    def scanner(self) -> Scanner:
        store = self.store
        return Scanner(store.layout, store.data_dir / "pds-holdings.sqlite",
                       store.data_dir / "pds-scan.lock",
                       lambda *event: self.reports.append(event), 1.0, 1.0)

    def scan(self) -> None:
        scanner, holdings = self.scanner(), Holdings(self.store.data_dir / "pds-holdings.sqlite")
        scanner.look_at_quarantine(holdings)
        scanner.rescan(holdings)
        holdings.close()

    def holds(self, cid: str, did: str | None) -> bool:
        return anyio.run(self.store.holds, cid, did)


@pytest.fixture(params=["pds-disk", "pds-s3"])
def planted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Planted]:
    data_dir = tmp_path / "origin"
    if request.param == "pds-disk":
        root = tmp_path / "blocks"
        root.mkdir()

        def disk(key: str) -> Path:
            # The disk layout has no "blocks/": accounts sit at the top of the location.
            return root / key.removeprefix("blocks/")

        def put(key: str, data: bytes) -> None:
            disk(key).parent.mkdir(parents=True, exist_ok=True)
            disk(key).write_bytes(data)

        def move(old: str, new: str) -> None:
            disk(new).parent.mkdir(parents=True, exist_ok=True)
            os.rename(disk(old), disk(new))

        store = open_store(OriginSettings(data_dir=data_dir, store="pds-disk",
                                          pds_blobstore=root))
        yield Planted(store, put, move, lambda key: disk(key).unlink())
        return
    seaweed = request.getfixturevalue("seaweed")
    bucket = f"pds-{uuid.uuid4().hex[:12]}"
    store = open_store(OriginSettings(
        data_dir=data_dir, store="pds-s3", s3_endpoint=seaweed.endpoint, s3_bucket=bucket,
        s3_access_key=seaweed.access_key, s3_secret_key=seaweed.secret_key))
    client = store.client
    client.create_bucket(Bucket=bucket)

    def s3_move(old: str, new: str) -> None:  # as the PDS does: copy, then delete
        client.copy_object(Bucket=bucket, Key=new, CopySource={"Bucket": bucket, "Key": old})
        client.delete_object(Bucket=bucket, Key=old)

    yield Planted(store,
                  lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
                  s3_move, lambda key: client.delete_object(Bucket=bucket, Key=key))


def read(store: Adopted, cid: str) -> bytes:
    async def main() -> bytes:
        return b"".join([chunk async for chunk in store.read(cid)])

    return anyio.run(main)


def test_a_blob_held_by_two_accounts_is_found_under_both(planted: Planted) -> None:
    shared, bobs = compute(SHARED), compute(BOBS)
    planted.put(f"blocks/{ALICE}/{shared}", SHARED)
    planted.put(f"blocks/{BOB}/{shared}", SHARED)
    planted.put(f"blocks/{BOB}/{bobs}", BOBS)
    planted.scan()
    store = planted.store
    assert store.holders(shared) == [ALICE, BOB]
    assert store.holders(bobs) == [BOB]
    assert planted.holds(shared, ALICE) and planted.holds(shared, BOB)
    assert planted.holds(shared, None)
    assert planted.holds(bobs, BOB) and not planted.holds(bobs, ALICE)
    assert anyio.run(store.size, shared) == len(SHARED)
    assert read(store, shared) == SHARED and read(store, bobs) == BOBS
    assert store.status()["blobs"] == 3
    assert planted.reports == []


def test_a_blob_uploaded_after_the_listing_is_found_by_its_did(planted: Planted) -> None:
    planted.scan()
    late = compute(SHARED)
    planted.put(f"blocks/{ALICE}/{late}", SHARED)
    assert not planted.holds(late, None)  # no listing has seen it yet
    assert planted.holds(late, ALICE)  # the request names the account: looked up directly
    assert planted.store.holders(late) == [ALICE]
    assert read(planted.store, late) == SHARED


def test_uploads_in_progress_quarantine_and_strays_are_never_served(planted: Planted) -> None:
    cids = {name: compute(name.encode() * 100) for name in
            ("tempt", "tmp", "quarantine", "stray", "named")}
    planted.put(f"tempt/{ALICE}/{cids['tempt']}", b"tempt" * 100)
    planted.put(f"tmp/{ALICE}/{cids['tmp']}", b"tmp" * 100)
    planted.put(f"quarantine/{ALICE}/{cids['quarantine']}", b"quarantine" * 100)
    planted.put(f"blocks/not-a-did/{cids['stray']}", b"stray" * 100)
    planted.put(f"blocks/{ALICE}/upload-{cids['named']}", b"named" * 100)
    planted.scan()
    for cid in cids.values():
        assert planted.store.holders(cid) == []
        assert not planted.holds(cid, ALICE) and not planted.holds(cid, None)
        assert anyio.run(planted.store.size, cid) is None
    assert planted.store.status()["blobs"] == 0
    # Something already in quarantine at the first look is reported as taken down.
    assert planted.reports == [(ALICE, cids["quarantine"], True)]


def test_quarantine_is_reported_and_undone(planted: Planted) -> None:
    shared = compute(SHARED)
    planted.put(f"blocks/{ALICE}/{shared}", SHARED)
    planted.put(f"blocks/{BOB}/{shared}", SHARED)
    planted.scan()

    planted.move(f"blocks/{ALICE}/{shared}", f"quarantine/{ALICE}/{shared}")
    planted.scan()
    assert planted.reports == [(ALICE, shared, True)]
    assert planted.store.holders(shared) == [BOB]
    assert planted.store.quarantined(shared) == [ALICE]
    assert not planted.holds(shared, ALICE)
    assert planted.holds(shared, BOB)

    planted.scan()  # nothing new: nothing reported twice
    assert len(planted.reports) == 1

    planted.move(f"quarantine/{ALICE}/{shared}", f"blocks/{ALICE}/{shared}")
    planted.scan()
    assert planted.reports[1:] == [(ALICE, shared, False)]
    assert planted.store.holders(shared) == [ALICE, BOB]
    assert planted.store.quarantined(shared) == []


def test_a_deleted_blob_leaves_the_map(planted: Planted) -> None:
    bobs = compute(BOBS)
    planted.put(f"blocks/{BOB}/{bobs}", BOBS)
    planted.scan()
    assert planted.holds(bobs, BOB)
    planted.delete(f"blocks/{BOB}/{bobs}")
    planted.scan()
    assert planted.store.holders(bobs) == []
    assert not planted.holds(bobs, BOB) and not planted.holds(bobs, None)
    assert planted.reports == []  # gone, not taken down


def test_writes_are_refused(planted: Planted) -> None:
    assert "read-only" in (planted.store.read_only or "")
    with pytest.raises(ReadOnlyStore):
        planted.store.stage()


def test_disk_symlinks_and_half_written_files_are_not_served(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    (root / ALICE).mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.write_bytes(b"not for the public")
    linked = compute(b"not for the public")
    (root / ALICE / linked).symlink_to(outside)
    (root / BOB).symlink_to(root / ALICE, target_is_directory=True)
    half = compute(SHARED)
    (root / ALICE / half).write_bytes(SHARED[:100])  # the PDS writes blob files in place
    store = open_store(OriginSettings(data_dir=tmp_path / "origin", store="pds-disk",
                                      pds_blobstore=root))
    planted = Planted(store, None, None, None)
    planted.scan()
    assert store.holders(linked) == [] and not planted.holds(linked, ALICE)
    assert store.holders(half) == [ALICE]
    assert anyio.run(store.size, half) is None  # hashed: not (yet) the named bytes
    (root / ALICE / half).write_bytes(SHARED)
    assert anyio.run(store.size, half) == len(SHARED)


def test_pds_disk_needs_its_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PDS_BLOBSTORE_DISK_LOCATION"):
        open_store(OriginSettings(data_dir=tmp_path, store="pds-disk"))


def test_one_worker_scans_and_another_takes_over(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    (root / ALICE).mkdir(parents=True)
    (root / ALICE / compute(BOBS)).write_bytes(BOBS)
    store = open_store(OriginSettings(data_dir=tmp_path / "origin", store="pds-disk",
                                      pds_blobstore=root))
    first, second = Planted(store, None, None, None).scanner(), None
    first.scan_interval = 0.05
    first.start()
    deadline = time.monotonic() + 10
    while store.status()["blobs"] != 1:
        assert time.monotonic() < deadline, "the scanner never listed the store"
        time.sleep(0.05)
    second = Planted(store, None, None, None).scanner()
    assert not second._lead()  # the first worker holds the lock
    first.stop()
    first.join(5)
    assert not first.is_alive()
    assert second._lead()  # its lock is free again


def test_a_long_listing_still_looks_at_quarantine(tmp_path: Path) -> None:
    """Listing a big PDS takes minutes; takedowns must not wait for it to end."""
    root = tmp_path / "blocks"
    cid = compute(BOBS)
    for did in (ALICE, BOB):
        (root / did).mkdir(parents=True)
        (root / did / cid).write_bytes(BOBS)
    store = open_store(OriginSettings(data_dir=tmp_path / "origin", store="pds-disk",
                                      pds_blobstore=root))
    planted = Planted(store, None, None, None)
    scanner = planted.scanner()
    scanner.scan_interval = 0.0
    listing = scanner.layout.accounts

    def slow_listing():
        for n, account in enumerate(listing()):
            yield account
            if n == 0:  # the PDS takes a blob down while the listing goes on
                (root / "quarantine" / ALICE).mkdir(parents=True)
                os.rename(root / ALICE / cid, root / "quarantine" / ALICE / cid)

    scanner.layout.accounts = slow_listing  # type: ignore[method-assign]
    holdings = Holdings(tmp_path / "origin" / "pds-holdings.sqlite")
    scanner.rescan(holdings)
    assert planted.reports == [(ALICE, cid, True)]
    assert store.holders(cid) == [BOB]
