"""The record index: which blobs each record (``at://`` URI) references, in SQLite.

The firehose follower writes it (creates and updates replace a URI's row, deletes remove
it); a label follower reads it to turn a label on a record into takedowns of that record's
blobs under that DID. Only records that reference blobs are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from atcdn.ingest.sqlite import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    uri TEXT PRIMARY KEY,   -- at://<did>/<collection>/<rkey>
    did TEXT NOT NULL,
    cids TEXT NOT NULL      -- JSON list of blob CIDs, in record order
);
CREATE INDEX IF NOT EXISTS records_by_did ON records (did);
"""


def record_uri(did: str, path: str) -> str:
    """The ``at://`` URI of the record at ``path`` (collection/rkey) in ``did``'s repo."""
    return f"at://{did}/{path}"


class RecordIndex:
    def __init__(self, data_dir: Path) -> None:
        self._db = connect(data_dir, SCHEMA)

    def close(self) -> None:
        self._db.close()

    def put(self, uri: str, did: str, cids: list[str]) -> None:
        """Record that ``uri`` (of ``did``) references ``cids``; none: forget the URI."""
        if not cids:
            self.delete(uri)
            return
        self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)",
                         (uri, did, json.dumps(cids)))

    def delete(self, uri: str) -> None:
        self._db.execute("DELETE FROM records WHERE uri = ?", (uri,))

    def blobs_of(self, uri: str) -> tuple[str, list[str]] | None:
        """(DID, blob CIDs) of the record at ``uri``, or None when it is not indexed."""
        row = self._db.execute("SELECT did, cids FROM records WHERE uri = ?", (uri,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
