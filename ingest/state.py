"""What ``atcdn ingest`` remembers across restarts, in the ingest database.

- the firehose cursor, per source URL (a follower pointed elsewhere starts afresh);
- the account takedowns ingest itself made at the origin (only those are lifted when an
  account becomes active again; an operator's own takedown stays);
- the progress of an interrupted backfill (cleared when a backfill completes).
"""

from __future__ import annotations

import time
from pathlib import Path

from atcdn.ingest.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    saved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS own_takedowns (
    did TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS backfill_lists (
    pds TEXT PRIMARY KEY,   -- listRepos position of a PDS being backfilled
    cursor TEXT,
    listed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS backfill_repos (
    did TEXT PRIMARY KEY,   -- listBlobs position of each account being backfilled
    pds TEXT,
    cursor TEXT,
    done INTEGER NOT NULL DEFAULT 0
);
"""


class State:
    def __init__(self, data_dir: Path) -> None:
        self._db = connect(data_dir, SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- firehose cursor -----------------------------------------------------------

    def cursor(self, source: str) -> int | None:
        row = self._db.execute("SELECT seq FROM cursors WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def save_cursor(self, source: str, seq: int | None) -> None:
        if seq is None:
            self._db.execute("DELETE FROM cursors WHERE source = ?", (source,))
        else:
            self._db.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)",
                             (source, seq, time.time()))

    def cursors(self) -> list[tuple[str, int, float]]:
        return self._db.execute("SELECT source, seq, saved_at FROM cursors").fetchall()

    # -- takedowns ingest made -----------------------------------------------------

    def note_takedown(self, did: str, status: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO own_takedowns VALUES (?, ?, ?)",
                         (did, status, time.time()))

    def is_own_takedown(self, did: str) -> bool:
        return self._db.execute("SELECT 1 FROM own_takedowns WHERE did = ?",
                                (did,)).fetchone() is not None

    def forget_takedown(self, did: str) -> None:
        self._db.execute("DELETE FROM own_takedowns WHERE did = ?", (did,))

    def own_takedowns(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM own_takedowns").fetchone()[0]

    # -- backfill progress ---------------------------------------------------------

    def repo_list_position(self, pds: str) -> tuple[str | None, bool]:
        """(listRepos cursor, fully listed) of a PDS being backfilled."""
        row = self._db.execute("SELECT cursor, listed FROM backfill_lists WHERE pds = ?",
                               (pds,)).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def save_repo_page(self, pds: str, cursor: str | None, dids: list[str]) -> None:
        """Remember a listRepos page: its accounts to backfill, and where to go on."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO backfill_repos (did, pds) VALUES (?, ?)",
                                 [(did, pds) for did in dids])
            self._db.execute("INSERT OR REPLACE INTO backfill_lists VALUES (?, ?, ?)",
                             (pds, cursor, int(cursor is None)))

    def add_repos(self, dids: list[str], pds: str | None = None) -> None:
        self._db.executemany("INSERT OR IGNORE INTO backfill_repos (did, pds) VALUES (?, ?)",
                             [(did, pds) for did in dids])

    def repos_to_backfill(self, *, pds: str | None = None,
                          dids: list[str] | None = None) -> list[tuple[str, str | None]]:
        """(DID, listBlobs cursor) of the accounts not finished yet: those listed from
        ``pds``, or those of ``dids``."""
        rows = self._db.execute(
            "SELECT did, cursor, pds FROM backfill_repos WHERE done = 0 ORDER BY rowid")
        wanted = set(dids or ())
        return [(did, cursor) for did, cursor, source in rows
                if (pds is not None and source == pds) or did in wanted]

    def save_blob_position(self, did: str, cursor: str | None, done: bool) -> None:
        self._db.execute("UPDATE backfill_repos SET cursor = ?, done = ? WHERE did = ?",
                         (cursor, int(done), did))

    def backfill_progress(self) -> tuple[int, int]:
        """(accounts done, accounts known) of the backfill in progress."""
        return self._db.execute(
            "SELECT COALESCE(SUM(done), 0), COUNT(*) FROM backfill_repos").fetchone()

    def clear_backfill(self) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM backfill_repos")
            self._db.execute("DELETE FROM backfill_lists")
