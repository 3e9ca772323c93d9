"""Takedowns and purges on one edge node.

A local takedown set in three scopes (CID, DID, and one repo's blob: DID + CID) answers
451 before any cache or fetch is consulted (``Takedowns.blocked``), so a taken-down item
cannot come back through a cache or the PDS fallback. A purge drops cached entries from
every tier: by CID, or by DID (every CID this node fetched for that DID, from the
never-evicted ``Holders`` table). Both bump a *generation* stamp file that every worker
checks on each request (one ``stat``): on a change a worker reloads the takedown set and
empties its memory tier.

Work in flight when a takedown or purge arrives (a fetch, a render) must not land in the
cache afterwards: every purge is numbered in a ``PurgeLog`` before it evicts, and a fetch
or render takes ``epoch()`` when it starts and calls ``admit`` after storing its entry,
which evicts it again if a purge touched its DID or CID meanwhile.

``takedown()`` and ``purge()`` are plain functions for the takedown-feed follower and the
admin routes; they only need the node's cache directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import diskcache
from atcdn.core.database import Database
from atcdn.core.errors import EdgeError
from atcdn.core.feed import Event, Follower, start_follower, start_origin_follower
from atcdn.core.settings import ControlSettings, EdgeSettings
from atcdn.core.takedowns import Target
from atcdn.edge.cache import DiskTier

log = logging.getLogger("atcdn.takedowns")
CHECK_EVERY = 0.1  # seconds between a worker's looks at the stamp file
SETTLE = 2 * CHECK_EVERY  # after this, every worker has seen a bump


class Generation:
    """A stamp file whose mtime (set explicitly, in ns) changes on every purge.

    Workers look at it at most every CHECK_EVERY seconds (a stat per request would be a
    third of a memory hit's cost); purges wait SETTLE before they report done.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.touch()
        self.seen = -1
        self.next_check = 0.0

    def changed(self) -> bool:
        now = time.monotonic()
        if now < self.next_check:
            return False
        self.next_check = now + CHECK_EVERY
        stamp = os.stat(self.path).st_mtime_ns
        if stamp == self.seen:
            return False
        self.seen = stamp
        return True

    def bump(self) -> None:
        now = time.time_ns()
        os.utime(self.path, ns=(now, now))


class Takedowns:
    """The node's takedown set, persisted in ``{cache_dir}/takedowns`` (never evicted).

    Keys: ``did:<did>`` (an account), ``cid:<cid>`` (a blob everywhere), ``pair:<did>
    <cid>`` (one repo's blob). ``blocked`` answers from the sets loaded at the last
    ``load()`` (the request path); ``blocked_now`` reads the store (after slow work).
    """

    def __init__(self, directory: Path) -> None:
        self.index = diskcache.Index(str(directory))
        self.dids: frozenset[str] = frozenset()
        self.cids: frozenset[str] = frozenset()
        self.pairs: frozenset[tuple[str, str]] = frozenset()
        self.load()

    def load(self) -> None:
        keys = list(self.index.keys())
        self.dids = frozenset(k[4:] for k in keys if k.startswith("did:"))
        self.cids = frozenset(k[4:] for k in keys if k.startswith("cid:"))
        self.pairs = frozenset(tuple(k[5:].split(" ", 1)) for k in keys  # type: ignore[misc]
                               if k.startswith("pair:"))

    def blocked(self, did: str, cid: str) -> bool:
        """Whether ``cid`` under ``did`` is taken down (451) in any of the three scopes."""
        return cid in self.cids or did in self.dids or (did, cid) in self.pairs

    def blocked_now(self, did: str, cid: str) -> bool:
        """``blocked``, read from the store rather than the last ``load()``."""
        return any(key in self.index for key in (f"cid:{cid}", f"did:{did}",
                                                 f"pair:{did} {cid}"))

    def add(self, *, did: str | None = None, cid: str | None = None) -> bool:
        """Record a takedown (both given: that repo's blob); True if it was new."""
        key = _key(did, cid)
        new = key not in self.index
        self.index[key] = time.time()
        return new

    def remove(self, *, did: str | None = None, cid: str | None = None) -> bool:
        """Lift the takedown of exactly this scope; True if there was one."""
        return self.index.pop(_key(did, cid), None) is not None


def _key(did: str | None, cid: str | None) -> str:
    if did and cid:
        return f"pair:{did} {cid}"
    if did:
        return f"did:{did}"
    if cid:
        return f"cid:{cid}"
    raise ValueError("a takedown names a did, a cid or both")


class PurgeLog:
    """Every purge (and so every takedown) of the node, numbered, in its own SQLite file.

    Each purge notes its DID and CIDs *before* it evicts anything. Work that started at
    ``epoch()`` and then stored an entry asks ``touched_since(epoch, did, cid)``: if a
    purge noted that DID or CID meanwhile, the entry may have been stored after the purge
    evicted, so it must go (``admit``). Only the last ``KEEP`` rows are kept.
    """

    KEEP = 10_000

    def __init__(self, path: Path) -> None:
        self._db = Database(path, "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY "
                                  "AUTOINCREMENT, did TEXT, cid TEXT);")

    def epoch(self) -> int:
        return self._db.run("SELECT COALESCE(MAX(seq), 0) FROM log")[0][0]

    def note(self, did: str | None, cids: Iterable[str | None]) -> None:
        rows = [(did, cid) for cid in cids] or [(did, None)]
        with self._db.write() as db:
            db.executemany("INSERT INTO log (did, cid) VALUES (?, ?)", rows)
            db.execute("DELETE FROM log WHERE seq <= (SELECT MAX(seq) FROM log) - ?",
                       (self.KEEP,))

    def touched_since(self, epoch: int, did: str, cid: str) -> bool:
        oldest = self._db.run("SELECT MIN(seq) FROM log")[0][0]
        if oldest is not None and oldest > epoch + 1:
            return True  # rows since ``epoch`` were trimmed: assume the worst
        return bool(self._db.run(
            "SELECT 1 FROM log WHERE seq > ? AND (cid = ? OR (did = ? AND cid IS NULL)) "
            "LIMIT 1", (epoch, cid, did)))

    def close(self) -> None:
        self._db.close()


def admit(log: PurgeLog, epoch: int, disk: DiskTier, did: str, cid: str) -> bool:
    """After storing an entry of ``cid`` fetched or rendered for ``did`` by work that
    started at ``epoch``: False (and the CID's entries evicted again) if a purge or
    takedown touched it meanwhile. The caller answers 451 if ``blocked_now``, else
    lets the client retry; it must not keep the entry in memory either way."""
    if not log.touched_since(epoch, did, cid):
        return True
    disk.evict_cid(cid)
    return False


def refuse_if_overtaken(node: Node, takedowns: Takedowns, disk: DiskTier, epoch: int,
                        did: str, cid: str) -> None:
    """After storing an entry of ``cid`` for ``did`` (work started at ``node.purge_log``'s
    ``epoch``): raise 451 if it is taken down now (even if this worker's ``takedowns``
    were not reloaded yet), 503 ``Purged`` if a purge overtook it; either way the CID's
    entries are evicted again and the caller must not keep or serve it."""
    if takedowns.blocked_now(did, cid):
        disk.evict_cid(cid)
        raise EdgeError(451, "TakenDown", f"{cid} is unavailable for legal reasons")
    if not admit(node.purge_log, epoch, disk, did, cid):
        raise EdgeError(503, "Purged", f"{cid} was purged while it was fetched; retry")


def follow_feed(apply: Callable[[Event], None], settings: EdgeSettings) -> Follower | None:
    """Start following the configured takedown feed (``ATCDN_EDGE_TAKEDOWN_SOURCE``: the
    origin's, by default; AWS when ``ATCDN_TAKEDOWN_FOLLOW`` is on; or none)."""
    source = settings.takedown_source or (
        "aws" if ControlSettings().takedown_follow else "origin")
    if source == "aws":
        return start_follower(apply, settings.cache_dir / "takedown-position")
    if source == "origin" and not settings.origin_token:
        log.warning("not following the origin's takedown feed: ATCDN_EDGE_ORIGIN_TOKEN is "
                    "unset (set it, or ATCDN_EDGE_TAKEDOWN_SOURCE=aws|none)")
    elif source == "origin":
        return start_origin_follower(apply, settings.cache_dir / "takedown-position-origin",
                                     settings.origin, settings.origin_token)
    return None


class Node:
    """The cache-directory layout shared by the server and these functions."""

    def __init__(self, cache_dir: Path) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.disk_dir = cache_dir / "disk"
        self.takedown_dir = cache_dir / "takedowns"
        self.metrics_dir = cache_dir / "metrics"
        self.lock_dir = cache_dir / "locks"
        self.tmp_dir = cache_dir / "tmp"
        self.video_dir = cache_dir / "video"  # edge/transcodes.py: {cid}/ and sources/{cid}
        self.generation = Generation(cache_dir / "generation")
        self.purge_log = PurgeLog(self.takedown_dir / "purges.sqlite")


def purge_disk(disk: DiskTier, video_dir: Path, *, did: str | None = None,
               cid: str | None = None, log: PurgeLog | None = None) -> int:
    """Evict every entry of ``cid`` and of every blob fetched for ``did``: the disk tier's
    entries and the HLS transcodes (served from disk without asking the source again).

    With both ``did`` and ``cid`` (one repo's blob) only ``cid`` goes: the cache holds
    bytes by CID, and another holder asks again. Noted in ``log`` (the node's
    ``PurgeLog``) before anything is evicted, so work in flight can tell."""
    pair = bool(did and cid)
    if log is not None:
        log.note(None if pair else did, [cid] if cid else [])
    victims = set(disk.cids_of(did)) if did and not pair else set()
    if log is not None and victims:
        log.note(None, victims)
    if cid:
        victims.add(cid)
    removed = 0
    for victim in victims:
        removed += disk.evict_cid(victim)
        for path in (video_dir / victim, video_dir / "sources" / victim):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
            elif path.exists():
                path.unlink()
                removed += 1
    return removed


def purge(cid: str | None = None, did: str | None = None,
          settings: EdgeSettings | None = None) -> int:
    """Drop cached copies (all tiers, all workers) of a blob or an account's blobs."""
    settings = settings or EdgeSettings()
    node = Node(settings.cache_dir)
    disk = DiskTier(node.disk_dir, settings.cache_size, settings.memory_max_item)
    try:
        removed = purge_disk(disk, node.video_dir, did=did, cid=cid, log=node.purge_log)
    finally:
        disk.close()
        node.purge_log.close()
    node.generation.bump()
    time.sleep(SETTLE)
    return removed


def takedown(cid: str | None = None, did: str | None = None, *, restore: bool = False,
             reason: str = "", settings: EdgeSettings | None = None) -> dict[str, Any]:
    """Block (451) a blob, an account, or one repo's blob (both) on this node and purge
    it; ``restore`` lifts exactly that scope. Returns the admin routes' answer
    (``Target.answer``) with ``purged``: entries removed. Blocking; every worker has
    seen the change when it returns."""
    settings = settings or EdgeSettings()
    target = Target(did=did, cid=cid, reason=reason)
    node = Node(settings.cache_dir)
    takedowns = Takedowns(node.takedown_dir)
    if restore:
        changed = takedowns.remove(did=did, cid=cid)
        node.generation.bump()
        time.sleep(SETTLE)
        return target.answer("restore", changed=changed, purged=0)
    changed = takedowns.add(did=did, cid=cid)
    removed = purge(cid=cid, did=did, settings=settings)
    return target.answer("takedown", changed=changed, purged=removed)
