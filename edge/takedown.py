"""Takedowns and purges on one edge node.

A local takedown set (by CID and by DID) answers 451 before any cache or fetch is
consulted, so a taken-down item cannot come back through a cache or the PDS fallback.
A purge drops cached entries from every tier. Both bump a *generation* stamp file that
every worker checks on each request (one ``stat``): on a change a worker reloads the
takedown set and empties its memory tier.

``takedown()`` and ``purge()`` are plain functions for tools outside the server (the
server's own routes and feed follower are in edge/admin.py); they only need the node's
cache directory. A purge first writes tombstones (edge/gate.py), so work in flight does
not put back what it removed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import diskcache
from atcdn.core.settings import EdgeSettings
from atcdn.edge.cache import DiskTier
from atcdn.edge.gate import Purges

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
    """The node's takedown set, persisted in ``{cache_dir}/takedowns`` (never evicted)."""

    def __init__(self, directory: Path) -> None:
        self.index = diskcache.Index(str(directory))
        self.dids: frozenset[str] = frozenset()
        self.cids: frozenset[str] = frozenset()
        self.load()

    def load(self) -> None:
        keys = list(self.index.keys())
        self.dids = frozenset(k[4:] for k in keys if k.startswith("did:"))
        self.cids = frozenset(k[4:] for k in keys if k.startswith("cid:"))

    def blocked(self, did: str, cid: str) -> bool:
        return cid in self.cids or did in self.dids

    def add(self, *, did: str | None = None, cid: str | None = None) -> None:
        for key in _keys(did, cid):
            self.index[key] = time.time()

    def remove(self, *, did: str | None = None, cid: str | None = None) -> None:
        for key in _keys(did, cid):
            self.index.pop(key, None)


def _keys(did: str | None, cid: str | None) -> list[str]:
    return ([f"did:{did}"] if did else []) + ([f"cid:{cid}"] if cid else [])


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
        self.purge_dir = cache_dir / "purges"  # edge/gate.py: when each CID/DID was purged
        self.generation = Generation(cache_dir / "generation")


def purge_victims(disk: DiskTier, *, did: str | None = None,
                  cid: str | None = None) -> set[str]:
    """The CIDs a purge of ``did`` and/or ``cid`` drops: ``cid`` and every blob fetched
    for ``did``."""
    victims = set(disk.cids_of(did)) if did else set()
    if cid:
        victims.add(cid)
    return victims


def purge_disk(disk: DiskTier, video_dir: Path, purges: Purges, *, did: str | None = None,
               cid: str | None = None) -> int:
    """Evict every entry of ``cid`` and of every blob fetched for ``did``: the disk tier's
    entries and the HLS transcodes (served from disk without asking the source again).

    The tombstones are written first, so work in flight that writes after this purge
    sees them and removes what it wrote (edge/gate.py)."""
    victims = purge_victims(disk, did=did, cid=cid)
    purges.mark(did=did)
    for victim in victims:
        purges.mark(cid=victim)
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


def purge(cid: str | None = None, did: str | None = None, *, settings: EdgeSettings) -> int:
    """Drop cached copies (all tiers, all workers) of a blob or an account's blobs."""
    node = Node(settings.cache_dir)
    disk = DiskTier(node.disk_dir, settings.cache_size, settings.memory_max_item)
    try:
        removed = purge_disk(disk, node.video_dir, Purges(node.purge_dir), did=did, cid=cid)
    finally:
        disk.close()
    node.generation.bump()
    time.sleep(SETTLE)
    return removed


def takedown(cid: str | None = None, did: str | None = None, *, restore: bool = False,
             settings: EdgeSettings) -> None:
    """Block (451) a blob or an account on this node and purge it; ``restore`` undoes."""
    node = Node(settings.cache_dir)
    takedowns = Takedowns(node.takedown_dir)
    if restore:
        takedowns.remove(did=did, cid=cid)
        node.generation.bump()
        time.sleep(SETTLE)
        return
    takedowns.add(did=did, cid=cid)
    purge(cid=cid, did=did, settings=settings)
