"""The metadata index: what the origin knows about each blob, in SQLite.

One small database file in the data directory, in WAL mode so several worker processes
read while one writes. Queries are indexed point look-ups (tens of microseconds), so
they run inline on the event loop rather than paying a thread hop.

Takedown rule (see ``blocked``): a blob is withheld (451) when its CID is taken down;
when the request names a DID (``?did=``) that is taken down; or, when no DID is named,
when the blob has referencing DIDs and every one of them is taken down. A blob no DID
references is only withheld by a CID takedown. Bytes are never deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from atcdn.origin.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    cid TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mime TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    cid TEXT NOT NULL,
    did TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (cid, did)
);
CREATE TABLE IF NOT EXISTS takedowns (
    subject TEXT PRIMARY KEY,  -- a CID or a DID (DIDs start with "did:", CIDs never do)
    at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class BlobMeta:
    cid: str
    size: int
    mime: str
    first_seen: float


class Index(Database):
    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)

    def get(self, cid: str) -> BlobMeta | None:
        rows = self._run("SELECT cid, size, mime, first_seen FROM blobs WHERE cid = ?", (cid,))
        return BlobMeta(*rows[0]) if rows else None

    def record(self, cid: str, size: int, mime: str, did: str | None = None) -> BlobMeta:
        """Note a stored blob (first sighting wins) and, optionally, a DID referencing it."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                                 (cid, size, mime, now))
                if did is not None:
                    self._db.execute("INSERT OR IGNORE INTO refs VALUES (?, ?, ?)",
                                     (cid, did, now))
                row = self._db.execute("SELECT cid, size, mime, first_seen FROM blobs "
                                       "WHERE cid = ?", (cid,)).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return BlobMeta(*row)

    def readings(self) -> list[tuple[str, str, float]]:
        """What the origin stores, for the gauges of /metrics."""
        count, size = self._run("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs")[0]
        return [("atcdn_origin_blobs", "Blobs the origin stores", float(count)),
                ("atcdn_origin_blob_bytes", "Bytes of the blobs the origin stores", float(size))]

    def dids(self, cid: str) -> list[str]:
        return [row[0] for row in self._run(
            "SELECT did FROM refs WHERE cid = ? ORDER BY did", (cid,))]

    def take_down(self, subject: str) -> bool:
        """Take ``subject`` down; True if it was taken down already."""
        with self._lock:
            return self._db.execute("INSERT OR IGNORE INTO takedowns VALUES (?, ?)",
                                    (subject, time.time())).rowcount == 0

    def restore(self, subject: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM takedowns WHERE subject = ?",
                                    (subject,)).rowcount > 0

    def is_taken_down(self, subject: str) -> bool:
        return bool(self._run("SELECT 1 FROM takedowns WHERE subject = ?", (subject,)))

    def blocked(self, cid: str, did: str | None = None) -> bool:
        """Whether to withhold ``cid`` (requested for ``did``, if given): the module rule."""
        if self.is_taken_down(cid) or (did is not None and self.is_taken_down(did)):
            return True
        if did is not None:
            return False
        refs, down = self._run(
            "SELECT COUNT(*), COUNT(t.subject) FROM refs r "
            "LEFT JOIN takedowns t ON t.subject = r.did WHERE r.cid = ?", (cid,))[0]
        return refs > 0 and refs == down
