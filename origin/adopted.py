"""Adopted PDS blobstores: the blobs a PDS already holds, served read-only, no copies.

The reference PDS keeps each blob at ``<location>/<did>/<cid>`` on disk, or under the key
``blocks/<did>/<cid>`` in an S3 bucket. Uploads in progress live under ``tempt/`` (disk)
or ``tmp/`` (S3); a blob it takes down is *moved* to ``quarantine/<did>/<cid>``. Only a
path whose two parts parse as a DID and a blob CID is ever considered (a regular file,
never a symlink), so those folders and anything else planted there are never served.

The same bytes may be held by several accounts. ``Holdings`` keeps the map CID -> DIDs in
a SQLite file in the origin's data directory: memory stays bounded by one account's
listing, whatever the size of the PDS, and every worker process shares one copy. One
worker at a time (whoever holds ``pds-scan.lock``) runs the ``Scanner``: every
``pds_scan_interval`` seconds it lists ``quarantine/`` (small) and reports each (DID, CID)
that moved there or back; every ``pds_rescan_interval`` seconds it lists every account.
A request naming a DID also looks at that DID's own path, so a blob uploaded since the
last listing is found at once, and (on disk) a quarantined one is gone at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from atcdn.core import cid as cids
from atcdn.core import did as dids
from atcdn.core.database import Database
from atcdn.origin.store import CHUNK, BlobStore, FileStore, S3Store, Staging

log = logging.getLogger("atcdn.adopted")

Pair = tuple[str, str]  # (did, cid)
# The scanner's news: (did, cid, taken_down) - True when the PDS quarantined that copy,
# False when it moved it back.
Report = Callable[[str, str, bool], None]


class ReadOnlyStore(Exception):
    """A write to an adopted blobstore."""


def is_blob_path(did: str, cid: str) -> bool:
    """Whether two path parts name an account and a blob (nothing else is ever served)."""
    if not _is_did(did):
        return False
    try:
        return bool(cids.parse(cid))
    except cids.CIDError:
        return False


def _is_did(text: str) -> bool:
    try:
        return dids.parse(text) == text  # the canonical form only, as the PDS writes it
    except dids.DIDError:
        return False


SCHEMA = """
CREATE TABLE IF NOT EXISTS held (did TEXT NOT NULL, cid TEXT NOT NULL,
                                 PRIMARY KEY (did, cid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS held_cid ON held (cid);
CREATE TABLE IF NOT EXISTS quarantined (did TEXT NOT NULL, cid TEXT NOT NULL,
                                        PRIMARY KEY (did, cid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantined_cid ON quarantined (cid);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class Holdings(Database):
    """Which accounts hold which blob, and which copies the PDS quarantined (SQLite)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    def _write(self, *steps: tuple[str, list[tuple]]) -> None:
        with self.write() as db:
            for sql, rows in steps:
                db.executemany(sql, rows)

    def holders(self, cid: str) -> list[str]:
        return [r[0] for r in self.run("SELECT did FROM held WHERE cid = ? ORDER BY did", (cid,))]

    def quarantined(self, cid: str) -> list[str]:
        return [r[0] for r in self.run(
            "SELECT did FROM quarantined WHERE cid = ? ORDER BY did", (cid,))]

    def add(self, did: str, cid: str) -> None:
        """Note a copy found outside a listing (unless the PDS quarantined it)."""
        self.run("INSERT OR IGNORE INTO held SELECT ?, ? WHERE NOT EXISTS "
                  "(SELECT 1 FROM quarantined WHERE did = ? AND cid = ?)", (did, cid, did, cid))

    def accounts(self) -> list[str]:
        return [r[0] for r in self.run("SELECT DISTINCT did FROM held")]

    def sync_account(self, did: str, listed: set[str]) -> None:
        """Make ``did``'s holdings what a listing of its folder found."""
        known = {r[0] for r in self.run("SELECT cid FROM held WHERE did = ?", (did,))}
        listed = listed - set(self._quarantined_of(did))
        self._write(("INSERT OR IGNORE INTO held VALUES (?, ?)",
                     [(did, c) for c in listed - known]),
                    ("DELETE FROM held WHERE did = ? AND cid = ?",
                     [(did, c) for c in known - listed]))

    def _quarantined_of(self, did: str) -> list[str]:
        return [r[0] for r in self.run("SELECT cid FROM quarantined WHERE did = ?", (did,))]

    def quarantine_diff(self, listed: set[Pair]) -> tuple[set[Pair], set[Pair]]:
        """(newly quarantined, released) copies, against what was last recorded."""
        known = set(self.run("SELECT did, cid FROM quarantined"))
        return listed - known, known - listed

    def record_quarantine(self, new: set[Pair], released: set[Pair]) -> None:
        self._write(("INSERT OR IGNORE INTO quarantined VALUES (?, ?)", sorted(new)),
                    ("DELETE FROM held WHERE did = ? AND cid = ?", sorted(new)),
                    ("DELETE FROM quarantined WHERE did = ? AND cid = ?", sorted(released)))

    def count(self) -> int:
        return self.run("SELECT COUNT(*) FROM held")[0][0]

    def note(self, key: str, value: float) -> None:
        """Keep a fact for /health (a time, a count): cheap to read from any worker."""
        self.run("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

    def noted(self, key: str) -> float | None:
        rows = self.run("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0][0] if rows else None


class DiskLayout:
    """A PDS disk blobstore: ``<root>/<did>/<cid>``, ``<root>/quarantine/<did>/<cid>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, did: str, cid: str) -> Path:
        return self.root / did / cid

    def find(self, did: str, cid: str) -> Path | None:
        """The blob file of ``did``'s copy, if it is a regular file there (no symlink)."""
        path = self.path(did, cid)
        try:
            return path if stat.S_ISREG(os.lstat(path).st_mode) else None
        except OSError:
            return None

    def exists(self, did: str, cid: str) -> bool:
        return self.find(did, cid) is not None

    def accounts(self) -> Iterator[tuple[str, set[str] | None]]:
        return _tree(self.root)

    def quarantined(self) -> Iterator[Pair]:
        for did, found in _tree(self.root / "quarantine"):
            for cid in found or ():
                yield did, cid


def _tree(base: Path) -> Iterator[tuple[str, set[str] | None]]:
    """(did, blob CIDs) for each account folder under ``base``; nothing else. None for a
    folder that could not be read this time (its holdings stay as they were)."""
    try:
        top = os.scandir(base)
    except FileNotFoundError:
        return
    with top:
        for folder in top:
            if not folder.is_dir(follow_symlinks=False) or not _is_did(folder.name):
                continue  # tempt/, quarantine/, stray files, links
            found: set[str] = set()
            try:
                with os.scandir(folder.path) as entries:
                    for entry in entries:
                        if entry.is_file(follow_symlinks=False) and is_blob_path(folder.name,
                                                                                  entry.name):
                            found.add(entry.name)
            except OSError as exc:
                log.warning("cannot list %s: %s", folder.path, exc)
                yield folder.name, None
                continue
            yield folder.name, found


class S3Layout:
    """A PDS S3 blobstore: keys ``blocks/<did>/<cid>`` and ``quarantine/<did>/<cid>``."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    @staticmethod
    def key(did: str, cid: str) -> str:
        return f"blocks/{did}/{cid}"

    def exists(self, did: str, cid: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(did, cid))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def accounts(self) -> Iterator[tuple[str, set[str] | None]]:
        """Listing pages of ``blocks/`` (1,000 keys each), one account at a time: keys are
        listed in order, so each account's keys come together."""
        did, found = None, set()
        for key_did, cid in self._pairs("blocks/"):
            if key_did != did:
                if did is not None:
                    yield did, found
                did, found = key_did, set()
            found.add(cid)
        if did is not None:
            yield did, found

    def quarantined(self) -> Iterator[Pair]:
        return self._pairs("quarantine/")

    def _pairs(self, prefix: str) -> Iterator[Pair]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
        for page in pages:
            for item in page.get("Contents", []):
                parts = item["Key"][len(prefix):].split("/")
                if len(parts) == 2 and is_blob_path(*parts):
                    yield parts[0], parts[1]


class Scanner(threading.Thread):
    """Keeps ``Holdings`` in step with the blobstore, in one worker of the origin."""

    def __init__(self, layout: DiskLayout | S3Layout, holdings_path: Path, lock_path: Path,
                 report: Report, scan_interval: float, rescan_interval: float) -> None:
        super().__init__(name="atcdn-pds-scanner", daemon=True)
        self.layout = layout
        self.holdings_path = holdings_path
        self.lock_path = lock_path
        self.report = report
        self.scan_interval = scan_interval
        self.rescan_interval = rescan_interval
        self._stopping = threading.Event()
        self._lock_fd: int | None = None
        self._looked = 0.0  # monotonic time of the last look at quarantine/

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        holdings = Holdings(self.holdings_path)
        next_rescan = 0.0
        try:
            while not self._stopping.is_set():
                if self._lead():
                    try:
                        # Quarantine first: a listing never re-adds a quarantined copy.
                        self.look_at_quarantine(holdings)
                        if time.monotonic() >= next_rescan:
                            self.rescan(holdings)
                            next_rescan = time.monotonic() + self.rescan_interval
                    except Exception:  # noqa: BLE001 - a failing store is retried next round
                        log.exception("scanning the PDS blobstore failed")
                self._stopping.wait(self.scan_interval)
        finally:
            holdings.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    def _lead(self) -> bool:
        """Whether this worker is the one scanning (holds the lock file)."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def look_at_quarantine(self, holdings: Holdings) -> None:
        new, released = holdings.quarantine_diff(set(self.layout.quarantined()))
        # Reported before it is recorded: a crash in between reports it again (takedowns
        # and restores are idempotent), never not at all.
        for did, cid in sorted(new):
            self._tell(did, cid, True)
        back = {pair for pair in released if self.layout.exists(*pair)}
        holdings.record_quarantine(new, released)
        for did, cid in sorted(released):
            if (did, cid) in back:
                holdings.add(did, cid)
            self._tell(did, cid, False)
        holdings.note("quarantine_looked", time.time())
        self._looked = time.monotonic()

    def rescan(self, holdings: Holdings) -> None:
        started = time.monotonic()
        seen: set[str] = set()
        for did, found in self.layout.accounts():
            seen.add(did)
            if found is not None:
                holdings.sync_account(did, found)
            if self._stopping.is_set():
                return
            if time.monotonic() - self._looked >= self.scan_interval:
                self.look_at_quarantine(holdings)  # a long listing keeps the 30 s bound
        for did in set(holdings.accounts()) - seen:
            holdings.sync_account(did, set())
        blobs = holdings.count()
        holdings.note("listed", time.time())
        holdings.note("blobs", blobs)
        log.info("PDS blobstore listed: %d blobs of %d accounts in %.1fs",
                 blobs, len(seen), time.monotonic() - started)

    def _tell(self, did: str, cid: str, taken_down: bool) -> None:
        try:
            self.report(did, cid, taken_down)
        except Exception:  # noqa: BLE001 - one failing report must not stop the others
            log.exception("recording %s of %s/%s failed",
                          "takedown" if taken_down else "restore", did, cid)


class Adopted:
    """What both adopted stores share: the holdings, the scanner, refusing writes.

    Mixed in before ``FileStore`` / ``S3Store``, whose reading code they reuse.
    """

    kind: str
    where: str
    holdings: Holdings
    layout: DiskLayout | S3Layout
    data_dir: Path
    scan_interval: float
    rescan_interval: float
    scanner: Scanner | None = None

    @property
    def read_only(self) -> str:
        return (f"this origin serves an adopted PDS blobstore ({self.kind} at {self.where}),"
                " read-only: blobs enter it through the PDS, not through the origin")

    def stage(self) -> Staging:
        raise ReadOnlyStore(self.read_only)

    def _commit(self, path: Path, cid: str) -> bool:
        raise ReadOnlyStore(self.read_only)

    def holders(self, cid: str) -> list[str]:
        """The DIDs whose copy of ``cid`` the PDS holds (and has not quarantined)."""
        return self.holdings.holders(cid)

    def quarantined(self, cid: str) -> list[str]:
        return self.holdings.quarantined(cid)

    def start(self, report: Report) -> None:
        self.scanner = Scanner(self.layout, self.data_dir / "pds-holdings.sqlite",
                               self.data_dir / "pds-scan.lock", report,
                               self.scan_interval, self.rescan_interval)
        self.scanner.start()

    def stop(self) -> None:
        if self.scanner is not None:
            self.scanner.stop()
            self.scanner.join(timeout=5)

    def status(self) -> dict:
        noted = self.holdings.noted
        blobs = noted("blobs")
        return {"adopted": self.where, "blobs": None if blobs is None else int(blobs),
                "listed": noted("listed"), "quarantineLooked": noted("quarantine_looked")}


class PdsDiskStore(Adopted, FileStore):
    """A PDS's disk blobstore (``PDS_BLOBSTORE_DISK_LOCATION``), read-only.

    The PDS writes a blob file in place (not atomically), so a blob is read and hashed
    once, the first time this origin is asked for it, before its size is trusted.
    """

    kind = "pds-disk"

    def __init__(self, root: Path, data_dir: Path, *, scan_interval: float,
                 rescan_interval: float) -> None:
        BlobStore.__init__(self, data_dir / "tmp")
        self.root = root
        self.where = str(root)
        self.layout = DiskLayout(root)
        self.data_dir = data_dir
        self.holdings = Holdings(data_dir / "pds-holdings.sqlite")
        self.scan_interval = scan_interval
        self.rescan_interval = rescan_interval

    def path(self, cid: str) -> Path:
        for did in self.holdings.holders(cid):
            found = self.layout.find(did, cid)
            if found is not None:
                return found
        raise FileNotFoundError(f"no account holds {cid}")

    async def holds(self, cid: str, did: str | None) -> bool:
        """Only an account holding ``cid`` gets it (any account, when none is named)."""
        # A stat per request: exact, so a quarantined copy is gone at once.
        if did is None:
            return self.local_path(cid) is not None
        if self.layout.find(did, cid) is None:
            return False
        if did not in self.holdings.holders(cid):
            self.holdings.add(did, cid)  # uploaded since the last listing
        return True

    def local_path(self, cid: str) -> Path | None:
        try:
            return self.path(cid)
        except FileNotFoundError:
            return None

    async def size(self, cid: str) -> int | None:
        path = self.local_path(cid)
        if path is None:
            return None
        return await anyio.to_thread.run_sync(_verified_size, path, cid)

    async def check(self) -> None:
        def probe() -> None:
            if not self.root.is_dir() or not os.access(self.root, os.R_OK | os.X_OK):
                raise OSError(f"the PDS blobstore {self.root} is not a readable directory")

        await anyio.to_thread.run_sync(probe)


def _verified_size(path: Path, cid: str) -> int | None:
    """The file's size if its bytes are ``cid``'s (else None: still being written)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb", buffering=0) as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return None
    if cids.from_digest(digest.digest()) != cid:
        log.warning("%s does not hash to its name (yet?); not served", path)
        return None
    return size


class PdsS3Store(Adopted, S3Store):
    """A PDS's S3 blobstore (``PDS_BLOBSTORE_S3_*``), read-only.

    Objects appear whole (the PDS uploads each in one request), so they are not re-hashed.
    """

    kind = "pds-s3"

    def __init__(self, data_dir: Path, *, scan_interval: float, rescan_interval: float,
                 **s3: Any) -> None:
        S3Store.__init__(self, data_dir / "tmp", prefix="blocks/", **s3)
        self.where = f"bucket {self.bucket}"
        self.layout = S3Layout(self.client, self.bucket)
        self.data_dir = data_dir
        self.holdings = Holdings(data_dir / "pds-holdings.sqlite")
        self.scan_interval = scan_interval
        self.rescan_interval = rescan_interval

    async def holds(self, cid: str, did: str | None) -> bool:
        """Only an account holding ``cid`` gets it (any account, when none is named)."""
        # One HEAD per request (the origin is asked on edge misses only): exact.
        holders = self.holdings.holders(cid)
        for candidate in [did] if did is not None else holders:
            if await anyio.to_thread.run_sync(self.layout.exists, candidate, cid):
                if candidate not in holders:
                    self.holdings.add(candidate, cid)  # uploaded since the last listing
                return True
        return False

    def key(self, cid: str) -> str:
        holders = self.holdings.holders(cid)
        if not holders:
            raise FileNotFoundError(f"no account holds {cid}")
        return S3Layout.key(holders[0], cid)

    async def size(self, cid: str) -> int | None:
        if not self.holdings.holders(cid):
            return None
        return await super().size(cid)

    def _get_object(self, cid: str, byte_range: str) -> dict:
        """The first holder's copy still there (all hold the same bytes): a copy moved
        to quarantine since the last look is skipped, not half-served."""
        from botocore.exceptions import ClientError

        for did in self.holdings.holders(cid):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=S3Layout.key(did, cid),
                                              Range=byte_range)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
        raise FileNotFoundError(f"no account holds {cid} any more")
