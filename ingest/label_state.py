"""What the label follower knows, in the ingest database (SQLite, shared with the record
index so the firehose follower's process can apply labels too).

- ``label_cursors``: the last ``#labels`` seq fully handled, per labeler stream.
- ``label_values``: the latest acting label per (subject URI, value): what is *wanted*.
- ``label_applied``: what was *done* at the origin per subject: the DID, and for a record
  the blob CIDs taken down; ``own`` lists what this follower took down itself (an
  operator's earlier takedown is never lifted by a ``neg``).

A subject that is wanted but has no ``label_applied`` row is *pending*: a record label
whose record the index has not seen yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from atcdn.ingest.label_frames import Label, parse_time
from atcdn.ingest.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS label_cursors (
    source TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS label_values (
    uri TEXT NOT NULL,
    val TEXT NOT NULL,
    neg INTEGER NOT NULL,
    exp TEXT,
    cts TEXT NOT NULL,
    PRIMARY KEY (uri, val)
);
CREATE TABLE IF NOT EXISTS label_applied (
    uri TEXT PRIMARY KEY,
    did TEXT NOT NULL,
    cids TEXT,              -- JSON list of blob CIDs taken down (NULL: the account)
    own TEXT NOT NULL,      -- JSON list of what this follower took down (CIDs or the DID)
    complete INTEGER NOT NULL  -- 0: an intent saved before acting (a crash replays it)
);
"""


@dataclass(frozen=True)
class Applied:
    did: str
    cids: list[str] | None  # None: the account itself
    own: list[str]
    complete: bool = True


class LabelState:
    def __init__(self, data_dir: Path) -> None:
        self._db = connect(data_dir, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def cursor(self, source: str) -> int | None:
        row = self._db.execute("SELECT seq FROM label_cursors WHERE source = ?",
                               (source,)).fetchone()
        return row[0] if row else None

    def save_cursor(self, source: str, seq: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO label_cursors VALUES (?, ?)", (source, seq))

    def note(self, label: Label) -> None:
        """Remember ``label`` as the latest word on (its URI, its value)."""
        self._db.execute("INSERT OR REPLACE INTO label_values VALUES (?, ?, ?, ?, ?)",
                         (label.uri, label.val, int(label.neg), label.exp, label.cts))

    def wanted(self, uri: str, now: datetime) -> bool:
        """Whether any acting label on ``uri`` holds now (not negated, not expired)."""
        rows = self._db.execute("SELECT exp FROM label_values WHERE uri = ? AND neg = 0",
                                (uri,)).fetchall()
        return any(exp is None or parse_time(exp) > now for (exp,) in rows)

    def applied(self, uri: str) -> Applied | None:
        row = self._db.execute("SELECT did, cids, own, complete FROM label_applied WHERE uri = ?",
                               (uri,)).fetchone()
        if row is None:
            return None
        return Applied(row[0], None if row[1] is None else json.loads(row[1]),
                       json.loads(row[2]), bool(row[3]))

    def set_applied(self, uri: str, applied: Applied) -> None:
        cids = None if applied.cids is None else json.dumps(applied.cids)
        self._db.execute("INSERT OR REPLACE INTO label_applied VALUES (?, ?, ?, ?, ?)",
                         (uri, applied.did, cids, json.dumps(applied.own), int(applied.complete)))

    def clear_applied(self, uri: str) -> None:
        self._db.execute("DELETE FROM label_applied WHERE uri = ?", (uri,))

    def pending(self, now: datetime, limit: int = 1000) -> list[str]:
        """Record URIs with a holding label and nothing applied yet (record not seen)."""
        rows = self._db.execute(
            "SELECT DISTINCT v.uri, v.exp FROM label_values v "
            "LEFT JOIN label_applied a ON a.uri = v.uri "
            "WHERE v.neg = 0 AND a.uri IS NULL AND v.uri LIKE 'at://%' LIMIT ?",
            (limit,)).fetchall()
        return sorted({uri for uri, exp in rows if exp is None or parse_time(exp) > now})

    def expired(self, now: datetime, limit: int = 1000) -> list[str]:
        """Applied subjects whose last holding label has expired (a ``neg`` is acted on
        when it arrives; expiry needs this sweep)."""
        rows = self._db.execute(
            "SELECT DISTINCT a.uri FROM label_applied a JOIN label_values v ON v.uri = a.uri "
            "WHERE v.neg = 0 AND v.exp IS NOT NULL LIMIT ?", (limit,)).fetchall()
        return [uri for (uri,) in rows if not self.wanted(uri, now)]
