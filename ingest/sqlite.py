"""The ingest database: one SQLite file in the data directory, shared by the record
index (records.py) and the follower's and backfill's own state (state.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

FILENAME = "ingest.sqlite"


def connect(data_dir: Path, schema: str) -> sqlite3.Connection:
    """A connection in autocommit + WAL mode (readers never block the follower) with
    ``schema`` applied."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(data_dir / FILENAME, timeout=30.0, isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across kill -9
    db.executescript(schema)
    return db
