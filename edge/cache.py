"""The edge's two cache tiers.

- ``MemoryTier``: per worker process, an LRU of ready-to-send entries under a byte
  budget. Small entries keep their body; big ones keep only the path of their disk file,
  so a hit costs neither SQLite nor a copy (granian sends the file with pathsend).
- ``DiskTier``: a ``diskcache`` directory shared by every worker of the node, with a byte
  budget and LRU eviction; it survives restarts. diskcache writes a value's file under a
  fresh name and only then commits its row, so a crash never leaves a half-written entry
  that is later served. Eviction runs in a background thread (``Culler``), never inside a
  request's store: a miss stores and returns, and a read waits at most for one batch of
  ten evictions, never for a whole cull.

Why LRU: ``bench/cache_policy.py`` replays Zipf(1.0) traces over ten times the budget
through this tier with each of diskcache's policies. Frequency (LFU) wins while
popularity stands still (0.715 against 0.660), but its counts never decay: when popular
objects come and go, as posts do, it falls behind and keeps falling (0.625 against 0.753
after 40 epochs of churn). LRU has no case that goes wrong (docs/benchmarks.md, "Disk
tier eviction").

Every entry is tagged with its CID, so a purge by CID drops the source blob and all its
renderings at once. A source enters the disk tier only as a ``Staging`` whose bytes hash
to its CID: the tier checks that itself (``put_source``). Which DIDs a cached CID
was fetched for (its *holders* on this node) lives in ``Holders``, a table beside the
cache that eviction never touches, so a purge by DID finds every rendition whose source
that DID holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import diskcache
from atcdn.core.database import Database
from atcdn.core.errors import AtcdnError
from atcdn.core.ranges import IMMUTABLE
from atcdn.core.staging import Staging

log = logging.getLogger("atcdn.edge")
CACHE_CONTROL = (b"cache-control", IMMUTABLE.encode())
PATH_ENTRY_COST = 1024  # what a path-only memory entry is charged against the budget
TOUCH_EVERY = 60.0  # seconds between telling the disk tier a file entry is still hot

Headers = list[tuple[bytes, bytes]]
Value = bytes | str  # a disk-tier value: small bytes, or the path of its file


@dataclass(slots=True)
class Entry:
    """A cached response: the full header list of its 200, and a body or a file."""

    etag: bytes
    size: int
    headers: Headers
    body: bytes | None = None
    path: str | None = None
    cost: int = field(default=0)
    touched: float = field(default=0.0)  # when the disk tier last saw a hit on its file


def make_entry(etag: str, content_type: str, size: int, *, body: bytes | None = None,
               path: str | None = None, extra: Headers = ()) -> Entry:  # type: ignore[assignment]
    headers: Headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(size).encode()),
        CACHE_CONTROL,
        (b"etag", etag.encode()),
        (b"accept-ranges", b"bytes"),
        (b"x-content-type-options", b"nosniff"),
        *extra,
    ]
    cost = size if body is not None else PATH_ENTRY_COST
    return Entry(etag.encode(), size, headers, body, path, cost)


def entry_of(value: Value, etag: str, content_type: str, *, file_max: int,
             extra: Headers = ()) -> Entry:  # type: ignore[assignment]
    """The memory entry of a disk-tier value: files up to ``file_max`` bytes are read into
    memory (a body from memory beats pathsend under granian: 5 MB hits 0.79x -> 1.00x
    nginx MB/s in bench/edge.py), bigger ones are sent from their file."""
    if isinstance(value, bytes):
        return make_entry(etag, content_type, len(value), body=value, extra=extra)
    size = os.path.getsize(value)
    if size <= file_max:
        with open(value, "rb") as fh:
            return make_entry(etag, content_type, size, body=fh.read(), extra=extra)
    return make_entry(etag, content_type, size, path=value, extra=extra)


class MemoryTier:
    """A byte-budgeted LRU of entries, private to one worker process."""

    def __init__(self, budget: int, touch: Callable[[str], None] = lambda key: None,
                 observe: Callable[[int, int], None] = lambda used, entries: None) -> None:
        self.budget = budget
        self.touch = touch  # keeps the disk tier's LRU clock of file entries current
        self.observe = observe  # told (bytes, entries) after every change, for the gauges
        self.used = 0
        self._items: OrderedDict[str, Entry] = OrderedDict()

    def get(self, key: str) -> Entry | None:
        entry = self._items.get(key)
        if entry is not None:
            if entry.path is not None:
                if not os.path.exists(entry.path):
                    self.drop(key)  # the disk tier evicted the file under us
                    return None
                now = time.monotonic()
                if now - entry.touched > TOUCH_EVERY:
                    entry.touched = now
                    self.touch(key)
            self._items.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        if entry.cost > self.budget:
            return
        self.drop(key)
        self._items[key] = entry
        self.used += entry.cost
        while self.used > self.budget:
            _, old = self._items.popitem(last=False)
            self.used -= old.cost
        self.observe(self.used, len(self._items))

    def drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old.cost
            self.observe(self.used, len(self._items))

    def clear(self) -> None:
        self._items.clear()
        self.used = 0
        self.observe(0, 0)


DISK_SHARE = 0.85  # of the filesystem the tier may fill: SQLite and fetches need the rest


def fit_to_disk(directory: Path, budget: int, held: int) -> int:
    """The budget, lowered to what the filesystem under ``directory`` can hold (``held``,
    what the tier holds already, plus what is free, times DISK_SHARE): a cache that
    believes it has more room than its disk fails its writes instead of evicting."""
    stat = os.statvfs(directory)
    return max(1, min(budget, int((held + stat.f_bavail * stat.f_frsize) * DISK_SHARE)))


class Holders:
    """(DID, CID) pairs: a CID cached on this node was fetched for that DID.

    Its own SQLite file, never evicted with cache entries. It is pruned instead: every
    ``PRUNE_EVERY`` new pairs, pairs whose CID has no cache entry left are dropped (a
    purge needs them only while something of the CID is cached).
    """

    PRUNE_EVERY = 10_000

    def __init__(self, path: Path, cached: Callable[[str], bool]) -> None:
        self.cached = cached
        self._db = Database(path, "CREATE TABLE IF NOT EXISTS holders (did TEXT NOT NULL, "
                                  "cid TEXT NOT NULL, PRIMARY KEY (did, cid)) WITHOUT ROWID;")
        self._lock = threading.Lock()
        self._added = 0

    def add(self, did: str, cid: str) -> None:
        new = self._db.change("INSERT OR IGNORE INTO holders VALUES (?, ?)", (did, cid))
        with self._lock:
            self._added += new
            prune = self._added >= self.PRUNE_EVERY
            if prune:
                self._added = 0
        if prune:
            self.prune()

    def cids_of(self, did: str) -> tuple[str, ...]:
        return tuple(row[0] for row in self._db.run("SELECT cid FROM holders WHERE did = ?",
                                                    (did,)))

    def holds(self, did: str, cid: str) -> bool:
        return bool(self._db.run("SELECT 1 FROM holders WHERE did = ? AND cid = ?", (did, cid)))

    def prune(self) -> int:
        cids = [row[0] for row in self._db.run("SELECT DISTINCT cid FROM holders")]
        gone = [(cid,) for cid in cids if not self.cached(cid)]
        self._db.many("DELETE FROM holders WHERE cid = ?", gone)
        return len(gone)

    def close(self) -> None:
        self._db.close()


EVICTION_POLICY = "least-recently-used"  # chosen on measurements: see the module's docstring
CULL_EVERY = 1.0  # seconds between the culler's checks when no write wakes it


class Culler:
    """Evicts from a diskcache ``Cache`` in a background thread, down to its size limit.

    The cache is opened with ``cull_limit=0``, so its ``set`` never evicts: a cull inside
    ``set`` would run on the event loop of the request that stored the entry, and hold
    SQLite's write lock that every LRU read of every worker waits for. Every write wakes
    the thread instead; it evicts in diskcache's own batches of ten rows, one short
    transaction each, so reads interleave. The tier may pass its budget by what is
    written while a cull runs (``fit_to_disk`` keeps room for that). The thread starts
    with the first write, so a process that only reads or purges never runs one.
    """

    def __init__(self, cache: diskcache.Cache, every: float = CULL_EVERY) -> None:
        self.cache = cache
        self.every = every
        self.evicted = 0  # entries this process's thread removed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="atcdn-cull",
                                                    daemon=True)
                    self._thread.start()
        self._wake.set()

    def cull(self) -> int:
        """Evict until the cache is within its size limit; the count removed."""
        try:
            removed = self.cache.cull()
        except diskcache.Timeout as exc:  # another worker held the lock too long: next pass
            removed = exc.args[0] if exc.args else 0
        self.evicted += removed
        return removed

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self.cache.volume() > self.cache.size_limit:
                    self.cull()
            except Exception:  # a broken pass must not end eviction for good
                log.exception("disk tier cull failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class DiskTier:
    """Shared by all workers of a node (SQLite index + value files)."""

    def __init__(self, directory: Path, budget: int, min_file_size: int, *,
                 policy: str = EVICTION_POLICY, background_cull: bool = True) -> None:
        self.min_file_size = min_file_size
        directory.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(
            str(directory),
            size_limit=budget,
            eviction_policy=policy,
            cull_limit=0 if background_cull else 10,  # 10: diskcache's own, inside set
            disk_min_file_size=min_file_size,
            tag_index=True,
            statistics=False,
        )
        self.budget = fit_to_disk(directory, budget, self.cache.volume())
        if self.budget != budget:
            self.cache.reset("size_limit", self.budget)
        self.holders = Holders(directory / "holders.sqlite", self.has_cid)
        self.culler = Culler(self.cache) if background_cull else None

    def readings(self) -> list[tuple[str, str, float]]:
        """What the tier holds, for the gauges of /metrics."""
        return [("atcdn_edge_disk_cache_bytes", "Bytes the disk tier holds",
                 float(self.cache.volume())),
                ("atcdn_edge_disk_cache_entries", "Entries in the disk tier", float(len(self.cache))),
                ("atcdn_edge_disk_cache_budget_bytes",
                 "The disk tier's budget (the configured size, fitted to its filesystem)",
                 float(self.budget))]

    def get(self, key: str) -> Value | None:
        """The value's bytes when small, else the path of its file; None on a miss."""
        value = self.cache.get(key, read=True)
        if value is None or isinstance(value, bytes):
            return value
        value.close()
        return value.name

    def touch(self, key: str) -> None:
        """Count a hit served from memory, so LRU eviction sees the file as used."""
        value = self.cache.get(key, read=True)
        if value is not None and not isinstance(value, bytes):
            value.close()

    def head(self, value: Value, size: int = 512) -> bytes:
        """The first bytes of a value, for sniffing its type."""
        if isinstance(value, bytes):
            return value[:size]
        with open(value, "rb") as fh:
            return fh.read(size)

    def put_bytes(self, key: str, body: bytes, cid: str) -> None:
        self.cache.set(key, body, tag=cid)
        self._stored()

    def _stored(self) -> None:
        if self.culler is not None:
            self.culler.wake()

    def put_source(self, key: str, staging: Staging, cid: str) -> None:
        """Store a finished staging's bytes under ``key``, if they hash to ``cid`` (else
        AtcdnError 502, nothing stored); the caller discards the staging after."""
        if not staging.matches(cid):
            raise AtcdnError(502, "VerificationFailed", f"bytes do not match {cid}; not cached")
        staging.close()
        if staging.size < self.min_file_size:
            self.put_bytes(key, staging.path.read_bytes(), cid)
            return
        with open(staging.path, "rb") as fh:
            self.cache.set(key, fh, read=True, tag=cid)
        self._stored()

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def remember_owner(self, did: str, cid: str) -> None:
        """Note which account a source came from, so a purge by DID finds its blobs."""
        self.holders.add(did, cid)

    def cids_of(self, did: str) -> tuple[str, ...]:
        return self.holders.cids_of(did)

    def has_cid(self, cid: str) -> bool:
        """Whether any entry (source or rendition) of ``cid`` is cached."""
        # diskcache has no public "any entry with this tag"; its tag index answers it.
        return self.cache._sql("SELECT 1 FROM Cache WHERE tag = ? LIMIT 1",
                               (cid,)).fetchone() is not None

    def evict_cid(self, cid: str) -> int:
        return self.cache.evict(cid)

    def close(self) -> None:
        if self.culler is not None:
            self.culler.stop()
        self.holders.close()
        self.cache.close()
