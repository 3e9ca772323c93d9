"""The metadata index: what the origin knows about each blob, in SQLite.

One small database file in the data directory, in WAL mode so several worker processes
read while one writes. Queries are indexed point look-ups (tens of microseconds), so
they run inline on the event loop rather than paying a thread hop.

It holds, per CID: the blob (size, type, and whether it is *pinned* — pushed by an
operator or found by ingest, kept — or *pulled* — handed over by an edge after a
stranger's request, evictable); its *holders* (the DIDs known to hold it, and how that
was learned); the takedowns in their three scopes; the takedown feed the edges follow;
and the byte counts behind the pulled tier's quotas. ``authorize`` is the serving rule
(docs/authorization.md). Bytes are never deleted by a takedown.

Over an S3 store several origins share, this file is a cache that can be deleted: the
holders are read through from the store (``learn``, origin/holders.py), the takedowns
replayed from the takedown feed, the blobs' size and type read from the store
(docs/fleet-store.md). ``settled`` says when a decision cannot change by what other
origins learned, so no shared read is needed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from atcdn.core.database import Database
from atcdn.core.feed import Event
from atcdn.core.quotas import over_budget
from atcdn.core.takedowns import Target

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    cid TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mime TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holders (
    cid TEXT NOT NULL,
    did TEXT NOT NULL,
    via TEXT NOT NULL,          -- push | ingest | pds (see Via)
    first_seen REAL NOT NULL,
    PRIMARY KEY (cid, did)
);
CREATE INDEX IF NOT EXISTS holders_did ON holders (did);
CREATE TABLE IF NOT EXISTS blocks (
    did TEXT NOT NULL,          -- '' when the scope is a CID
    cid TEXT NOT NULL,          -- '' when the scope is a DID
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (did, cid)
);
CREATE TABLE IF NOT EXISTS feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    did TEXT,
    cid TEXT,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS usage (
    subject TEXT NOT NULL,      -- 'did:...' or 'pds:<url>'
    window INTEGER NOT NULL,    -- start of the quota window (unix seconds)
    bytes INTEGER NOT NULL,
    PRIMARY KEY (subject, window)
);
"""
# Columns added after the first release, and the tables they replace (migrated once).
COLUMNS = {"pinned": "INTEGER NOT NULL DEFAULT 1", "used": "REAL NOT NULL DEFAULT 0",
           "synced": "REAL NOT NULL DEFAULT 0"}  # synced: holders last read from the store
TOUCH_EVERY = 60.0  # seconds between recording that a pulled blob was read

Via = Literal["push", "ingest", "pds"]
Decision = Literal["serve", "taken-down", "not-held"]


@dataclass(frozen=True)
class BlobMeta:
    cid: str
    size: int
    mime: str
    first_seen: float
    pinned: bool = True
    used: float = 0.0
    synced: float = 0.0  # when the shared holders were last read (0: never)


class Index:
    def __init__(self, path: Path) -> None:
        self.created = not path.exists()  # a new (or deleted) file: rebuild from shared facts
        self._database = Database(path, SCHEMA)
        self._run = self._database.run
        self._write = self._database.write
        with self._write() as db:
            _migrate(db)

    def close(self) -> None:
        self._database.close()

    # -- blobs and holders --------------------------------------------------------------

    def get(self, cid: str) -> BlobMeta | None:
        rows = self._run("SELECT cid, size, mime, first_seen, pinned, used, synced FROM blobs "
                         "WHERE cid = ?", (cid,))
        return _meta(rows[0]) if rows else None

    def record(self, cid: str, size: int, mime: str, did: str | None = None, *,
               via: Via = "push", pinned: bool = True) -> BlobMeta:
        """Note a stored blob (first sighting wins; pinning is never undone) and,
        optionally, a DID holding it."""
        now = time.time()
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO blobs (cid, size, mime, first_seen, pinned, used)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (cid, size, mime, now, int(pinned), now))
            if pinned:
                db.execute("UPDATE blobs SET pinned = 1 WHERE cid = ?", (cid,))
            if did is not None:
                db.execute("INSERT OR IGNORE INTO holders VALUES (?, ?, ?, ?)",
                           (cid, did, via, now))
            row = db.execute("SELECT cid, size, mime, first_seen, pinned, used, synced FROM blobs "
                             "WHERE cid = ?", (cid,)).fetchone()
        return _meta(row)

    def readings(self) -> list[tuple[str, str, float]]:
        """What the origin stores, for the gauges of /metrics (pinned and pulled)."""
        rows = dict((bool(pinned), (count, size)) for pinned, count, size in self._run(
            "SELECT pinned, COUNT(*), COALESCE(SUM(size), 0) FROM blobs GROUP BY pinned"))
        count = sum(c for c, _ in rows.values())
        size = sum(s for _, s in rows.values())
        pulled = rows.get(False, (0, 0))[1]
        return [("atcdn_origin_blobs", "Blobs the origin stores", float(count)),
                ("atcdn_origin_blob_bytes", "Bytes of the blobs the origin stores", float(size)),
                ("atcdn_origin_pulled_bytes", "Bytes of the evictable pulled tier",
                 float(pulled))]

    def add_holder(self, cid: str, did: str, via: Via) -> bool:
        """Record that ``did`` holds ``cid`` (bytes or not); True if it was new."""
        return self._database.change("INSERT OR IGNORE INTO holders VALUES (?, ?, ?, ?)",
                                     (cid, did, via, time.time())) > 0

    def holders(self, cid: str) -> dict[str, str]:
        """DID -> how it was learned (``via``), for every known holder of ``cid``."""
        return dict(self._run("SELECT did, via FROM holders WHERE cid = ? ORDER BY did", (cid,)))

    def dids(self, cid: str) -> list[str]:
        return list(self.holders(cid))

    def learn(self, cid: str, holders: dict[str, str]) -> None:
        """Merge the holders of a stored blob read from the shared store, and note when."""
        now = time.time()
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO holders VALUES (?, ?, ?, ?)",
                           [(cid, did, via, now) for did, via in holders.items()])
            db.execute("UPDATE blobs SET synced = ? WHERE cid = ?", (now, cid))

    # -- takedowns ----------------------------------------------------------------------

    def take_down(self, target: Target) -> tuple[bool, int | None]:
        """Record a takedown; (whether it was new, its feed seq when it was)."""
        with self._write() as db:
            changed = db.execute("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)",
                                 (target.did or "", target.cid or "", target.reason,
                                  time.time())).rowcount > 0
            return changed, self._append(db, "takedown", target) if changed else None

    def restore(self, target: Target) -> tuple[bool, int | None]:
        """Lift a takedown of exactly this scope; (whether one was lifted, its feed seq)."""
        with self._write() as db:
            changed = db.execute("DELETE FROM blocks WHERE did = ? AND cid = ?",
                                 (target.did or "", target.cid or "")).rowcount > 0
            return changed, self._append(db, "restore", target) if changed else None

    def is_taken_down(self, subject: str) -> bool:
        """Whether a DID (account scope) or a CID (blob scope) is taken down."""
        did, cid = (subject, "") if subject.startswith("did:") else ("", subject)
        return bool(self._run("SELECT 1 FROM blocks WHERE did = ? AND cid = ?", (did, cid)))

    def authorize(self, cid: str, did: str | None) -> Decision:
        """May ``cid`` be served under ``did`` (or, with no DID, by CID alone)?

        - a CID takedown withholds it from everyone;
        - under a DID: withheld if that DID's account or its (DID, CID) is taken down;
          served if the DID holds the CID; if the blob has no holder at all
          (an operator pushed it without ``?did=``) nothing DID-scoped can apply, so it
          is served; otherwise the DID does not hold it: ``not-held`` (404);
        - by CID alone: served if it has no holder, or if any holder is not taken down
          (that holder's copy is what is served); withheld if every holder is.
        """
        if self._run("SELECT 1 FROM blocks WHERE did = '' AND cid = ?", (cid,)):
            return "taken-down"
        if did is not None:
            if self._run("SELECT 1 FROM blocks WHERE did = ? AND cid IN ('', ?)", (did, cid)):
                return "taken-down"
            if self._run("SELECT 1 FROM holders WHERE cid = ? AND did = ?", (cid, did)):
                return "serve"
            held = self._run("SELECT 1 FROM holders WHERE cid = ? LIMIT 1", (cid,))
            return "not-held" if held else "serve"
        holders, live = self._run(
            "SELECT COUNT(*), COUNT(*) - COUNT(b.did) FROM holders h "
            "LEFT JOIN blocks b ON b.did = h.did AND b.cid IN ('', h.cid) WHERE h.cid = ?",
            (cid,))[0]
        return "serve" if holders == 0 or live > 0 else "taken-down"

    def settled(self, cid: str, did: str | None) -> bool:
        """Whether ``authorize(cid, did)`` stays true whatever holders other origins
        learned since (holders are only ever added): a takedown that needs no holder, or
        a holder that backs the request. Otherwise the answer rests on holders not being
        known here (not held, no holder, every known holder taken down)."""
        if self._run("SELECT 1 FROM blocks WHERE did = '' AND cid = ?", (cid,)):
            return True
        if did is not None:
            return bool(self._run("SELECT 1 FROM blocks WHERE did = ? AND cid IN ('', ?) "
                                  "UNION ALL SELECT 1 FROM holders WHERE cid = ? AND did = ?",
                                  (did, cid, cid, did)))
        return bool(self._run(
            "SELECT 1 FROM holders h LEFT JOIN blocks b ON b.did = h.did AND b.cid IN ('', h.cid)"
            " WHERE h.cid = ? AND b.did IS NULL LIMIT 1", (cid,)))

    def has_block(self, target: Target) -> bool:
        """Whether a takedown of exactly this scope is in force."""
        return bool(self._run("SELECT 1 FROM blocks WHERE did = ? AND cid = ?",
                              (target.did or "", target.cid or "")))

    def blocked(self, cid: str, did: str | None = None) -> bool:
        return self.authorize(cid, did) == "taken-down"

    # -- the feed the edges follow -------------------------------------------------------

    @staticmethod
    def _append(db: sqlite3.Connection, action: str, target: Target) -> int:
        at = datetime.now(UTC).isoformat(timespec="seconds")
        cursor = db.execute("INSERT INTO feed (action, did, cid, reason, at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (action, target.did, target.cid, target.reason, at))
        return int(cursor.lastrowid)  # type: ignore[arg-type]

    def events(self, after: int = 0, limit: int = 1000) -> list[Event]:
        """Takedown and restore events with ``seq > after``, oldest first."""
        rows = self._run("SELECT seq, action, cid, did, at, reason FROM feed WHERE seq > ? "
                         "ORDER BY seq LIMIT ?", (after, limit))
        return [Event(seq, action, cid, did, at, reason)
                for seq, action, cid, did, at, reason in rows]

    def last_seq(self) -> int:
        return self._run("SELECT COALESCE(MAX(seq), 0) FROM feed")[0][0]

    # -- the pulled tier: quotas and eviction ---------------------------------------------

    def usage(self, subject: str, window: int) -> int:
        rows = self._run("SELECT bytes FROM usage WHERE subject = ? AND window = ?",
                         (subject, window))
        return rows[0][0] if rows else 0

    def charge(self, subjects: list[str], window: int, size: int) -> None:
        """Count ``size`` bytes received against each subject in this window."""
        with self._write() as db:
            for subject in subjects:
                db.execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (subject, window) "
                           "DO UPDATE SET bytes = bytes + excluded.bytes",
                           (subject, window, size))
            db.execute("DELETE FROM usage WHERE window < ?", (window,))

    def touch(self, meta: BlobMeta) -> None:
        """Note a read of a pulled blob (at most once a minute), for eviction order."""
        now = time.time()
        if not meta.pinned and now - meta.used > TOUCH_EVERY:
            self._run("UPDATE blobs SET used = ? WHERE cid = ?", (now, meta.cid))

    def pulled_bytes(self) -> int:
        return self._run("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE pinned = 0")[0][0]

    def evict_pulled(self, budget: int) -> list[str]:
        """Forget least recently used pulled blobs until they fit ``budget``; returns
        their CIDs (the caller deletes the bytes). Their holders are kept: still true."""
        with self._write() as db:
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs "
                               "WHERE pinned = 0").fetchone()[0]
            victims = over_budget(db.execute("SELECT cid, size FROM blobs WHERE pinned = 0 "
                                             "ORDER BY used"), total, budget)
            db.executemany("DELETE FROM blobs WHERE cid = ? AND pinned = 0",
                           [(cid,) for cid in victims])
        return victims


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a database of an earlier release up to this schema (once)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
    for name, kind in COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE blobs ADD COLUMN {name} {kind}")
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    if "refs" in tables:  # the first release's holders: all pushed with ?did=
        db.execute("INSERT OR IGNORE INTO holders SELECT cid, did, 'push', first_seen FROM refs")
        db.execute("DROP TABLE refs")
    if "takedowns" in tables:  # the first release's CID or DID takedowns
        db.execute("INSERT OR IGNORE INTO blocks SELECT "
                   "CASE WHEN subject LIKE 'did:%' THEN subject ELSE '' END, "
                   "CASE WHEN subject LIKE 'did:%' THEN '' ELSE subject END, '', at "
                   "FROM takedowns")
        db.execute("DROP TABLE takedowns")


def _meta(row: tuple) -> BlobMeta:
    cid, size, mime, first_seen, pinned, used, synced = row
    return BlobMeta(cid, size, mime, first_seen, bool(pinned), used, synced)
