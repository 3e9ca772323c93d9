"""Blob stores: CID -> bytes, on a local filesystem or in any S3-compatible bucket.

Both backends receive a blob the same way: the body streams into a ``Staging`` temp file
on local disk while it is hashed (atcdn.core.staging), and ``commit`` itself checks the
hash against the CID before anything is stored (an atomic link into place for the
filesystem, an upload for S3), as a blockstore does: no caller can store bytes under a
CID they do not hash to. So a crash, a mismatched body or an oversized one never leaves
a partial or wrong blob where a reader could find it.
"""

from __future__ import annotations

import errno
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
from atcdn.core.errors import AtcdnError
from atcdn.core.mime import SNIFF_BYTES
from atcdn.core.staging import Staging, sweep

if TYPE_CHECKING:
    from atcdn.core.settings import OriginSettings

CHUNK = 1024 * 1024  # read unit: big enough that thread hops are cheap


class BlobStore(ABC):
    """Where verified blobs live. Readers only ever see whole, verified blobs."""

    read_only: str | None = None  # why writes are refused (adopted PDS blobstores)

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        sweep(tmp_dir)

    def stage(self) -> Staging:
        return Staging(self.tmp_dir)

    async def commit(self, staging: Staging, cid: str) -> bool:
        """Store a staging under ``cid``, if its bytes hash to ``cid``; True if it was new.

        Raises AtcdnError 422 ``CidMismatch`` (nothing stored) otherwise. The staging is
        consumed (its temp file removed) whatever happens.
        """
        try:
            await staging.finish()
            if not staging.matches(cid):
                raise AtcdnError(422, "CidMismatch",
                                 f"body hashes to {staging.verifier.cid}, not {cid}; nothing stored")
            await anyio.to_thread.run_sync(staging.sync_and_close)
            return await anyio.to_thread.run_sync(self._commit, staging.path, cid)
        finally:
            staging.discard()

    @abstractmethod
    def _commit(self, path: Path, cid: str) -> bool: ...

    @abstractmethod
    async def size(self, cid: str) -> int | None:
        """The blob's size in bytes, or None when it is not stored."""

    @abstractmethod
    def read(self, cid: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start`` up to ``end`` (exclusive; None = to the end)."""

    async def head(self, cid: str, length: int = SNIFF_BYTES) -> bytes:
        chunks = [chunk async for chunk in self.read(cid, 0, length)]
        return b"".join(chunks)

    def local_path(self, cid: str) -> Path | None:
        """A local file holding the blob, for zero-copy sends; None if there is none."""
        return None

    @abstractmethod
    async def check(self) -> None:
        """Raise if the store cannot be used (for /health)."""

    async def holds(self, cid: str, did: str | None) -> bool:
        """Whether ``cid`` may be served to a request naming ``did``. The origin's own
        stores hold blobs by CID alone: ``size`` decides. (Adopted blobstores hold them per
        account: origin/adopted.py.)"""
        return True

    def quarantined(self, cid: str) -> list[str]:
        """DIDs whose copy of ``cid`` the blobstore's owner took down (adopted stores)."""
        return []

    def start(self, report: Callable[[str, str, bool], None]) -> None:
        """Begin background work; ``report(did, cid, taken_down)`` hears of takedowns
        the store finds on its own (an adopted PDS quarantining a blob)."""

    def stop(self) -> None:
        """End background work."""

    def status(self) -> dict:
        """Facts for /health."""
        return {}


class FileStore(BlobStore):
    """Blobs as files: ``root/blobs/ab/cd/<cid>``, sharded on digest characters."""

    def __init__(self, root: Path) -> None:
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        super().__init__(root / "tmp")  # same filesystem, so linking into place is atomic

    def path(self, cid: str) -> Path:
        return self.blobs / cid[7:9] / cid[9:11] / cid

    def local_path(self, cid: str) -> Path | None:
        return self.path(cid)

    def _commit(self, path: Path, cid: str) -> bool:
        final = self.path(cid)
        created_dirs = [d for d in (final.parent.parent, final.parent) if not d.is_dir()]
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            # link() refuses to replace: of concurrent writers of one CID exactly one
            # creates the blob, the others learn it already exists.
            os.link(path, final)
        except FileExistsError:
            return False
        except OSError as exc:  # filesystems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            if final.exists():
                return False
            os.replace(path, final)
        # Make the new name durable, and the names of any shard directory just made.
        for directory in [final.parent, *(d.parent for d in reversed(created_dirs))]:
            _fsync_dir(directory)
        return True

    async def size(self, cid: str) -> int | None:
        try:
            return (await anyio.to_thread.run_sync(os.stat, self.path(cid))).st_size
        except FileNotFoundError:
            return None

    async def read(self, cid: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        file = await anyio.to_thread.run_sync(open, self.path(cid), "rb", 0)
        try:
            await anyio.to_thread.run_sync(file.seek, start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = await anyio.to_thread.run_sync(file.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def check(self) -> None:
        def probe() -> None:
            if not os.access(self.blobs, os.W_OK) or not os.access(self.tmp_dir, os.W_OK):
                raise OSError(f"store directories under {self.blobs.parent} are not writable")
            os.statvfs(self.blobs)

        await anyio.to_thread.run_sync(probe)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# botocore's "standard" mode retries throttling, 500/502/503/504 and dropped connections
# with jittered backoff: a storage node dying under a write costs a retry, not an error.
RETRIES = {"mode": "standard", "max_attempts": 5}


class S3Store(BlobStore):
    """Blobs as objects ``<prefix><cid>`` in a bucket of any S3-compatible service."""

    MULTIPART_THRESHOLD = 64 * 1024 * 1024

    def __init__(self, tmp_dir: Path, *, endpoint: str | None, bucket: str, region: str,
                 access_key: str | None, secret_key: str | None, path_style: bool,
                 prefix: str) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        super().__init__(tmp_dir)
        self.bucket = bucket
        self.prefix = prefix
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path" if path_style else "auto"},
                          signature_version="s3v4", retries=RETRIES),
        )
        self.transfer = TransferConfig(multipart_threshold=self.MULTIPART_THRESHOLD,
                                       multipart_chunksize=16 * 1024 * 1024, max_concurrency=4)

    def key(self, cid: str) -> str:
        return self.prefix + cid

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (convenient for fresh local setups)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in (
                        "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _size(self, cid: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(cid))["ContentLength"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _commit(self, path: Path, cid: str) -> bool:
        # Objects appear atomically in S3; concurrent writers of a CID upload equal bytes.
        if self._size(cid) is not None:
            return False
        self.client.upload_file(str(path), self.bucket, self.key(cid), Config=self.transfer)
        return True

    async def size(self, cid: str) -> int | None:
        return await anyio.to_thread.run_sync(self._size, cid)

    async def read(self, cid: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        from botocore.exceptions import ClientError

        byte_range = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            response = await anyio.to_thread.run_sync(self._get_object, cid, byte_range)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # reading from the end of the object (or an empty one): no bytes
            raise
        body = response["Body"]
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(body.read, CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    def _get_object(self, cid: str, byte_range: str) -> dict:
        return self.client.get_object(Bucket=self.bucket, Key=self.key(cid), Range=byte_range)

    async def check(self) -> None:
        await anyio.to_thread.run_sync(lambda: self.client.head_bucket(Bucket=self.bucket))


def open_store(settings: OriginSettings) -> BlobStore:
    """The store the settings name: ``fs`` (default) or ``s3``, or a PDS's own blobstore
    adopted read-only: ``pds-disk`` or ``pds-s3`` (origin/adopted.py)."""
    s3 = dict(endpoint=settings.s3_endpoint, bucket=settings.s3_bucket,
              region=settings.s3_region, access_key=settings.s3_access_key,
              secret_key=settings.s3_secret_key, path_style=settings.s3_path_style)
    if settings.store in ("pds-disk", "pds-s3"):
        from atcdn.origin.adopted import PdsDiskStore, PdsS3Store

        intervals = dict(scan_interval=settings.pds_scan_interval,
                         rescan_interval=settings.pds_rescan_interval)
        if settings.store == "pds-s3":
            return PdsS3Store(settings.data_dir, **intervals, **s3)
        if settings.pds_blobstore is None:
            raise ValueError("store pds-disk needs ATCDN_ORIGIN_PDS_BLOBSTORE: the PDS's"
                             " PDS_BLOBSTORE_DISK_LOCATION (e.g. /pds/blocks)")
        return PdsDiskStore(settings.pds_blobstore, settings.data_dir, **intervals)
    if settings.store == "s3":
        store = S3Store(settings.data_dir / "tmp", prefix=settings.s3_prefix, **s3)
        store.ensure_bucket()
        return store
    return FileStore(settings.data_dir)
