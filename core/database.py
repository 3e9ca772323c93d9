"""A small SQLite database shared by the worker processes of one node.

WAL mode, so several processes read while one writes; autocommit, with explicit
``write()`` transactions taken at once (``BEGIN IMMEDIATE``) so two writers never
deadlock; a long busy timeout; one connection per process, shared by its threads under
a lock. Queries are indexed point look-ups, cheap enough to run inline.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        # Switching to WAL takes a lock; several workers start at once, so retry.
        for attempt in range(50):
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.executescript(schema)
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self._db.execute("PRAGMA synchronous = NORMAL")

    def run(self, sql: str, params: tuple = ()) -> list[tuple]:
        """One statement; its rows."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def change(self, sql: str, params: tuple = ()) -> int:
        """One statement; how many rows it changed."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def many(self, sql: str, rows: Iterable[tuple]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends (rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()
