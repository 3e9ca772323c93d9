"""One SQLite file shared by an origin's worker processes (the index, the holdings).

WAL mode, so several processes read while one writes; one connection per object, used
from any thread under a lock. Point queries take tens of microseconds, so callers run
them inline on the event loop rather than paying a thread hop.
"""

from __future__ import annotations

import sqlite3
import threading
import time
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

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()
