"""Takedowns and purges on one edge node.

A local takedown set in three scopes (CID, DID, and one repo's blob: DID + CID) answers
451 before any cache or fetch is consulted, so a taken-down item cannot come back through
a cache or the PDS fallback. A purge drops cached entries from every tier: by CID, or by
DID (every CID this node fetched for that DID, from the never-evicted holders table of
edge/cache.py). Both bump a *generation* stamp file that
every worker checks on each request (one ``stat``): on a change a worker reloads the
takedown set and empties its memory tier.

``takedown()`` and ``purge()`` are plain functions for tools outside the server (the
server's own routes and feed follower are in edge/admin.py); they only need the node's
cache directory. A purge first writes tombstones (edge/gate.py), so work in flight does
not put back what it removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
from atcdn.core.feed import Event, Follower, start_follower, start_origin_follower
from atcdn.core.settings import ControlSettings, EdgeSettings
from atcdn.core.takedowns import Target
from atcdn.edge.cache import DiskTier
from atcdn.edge.gate import Purges

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
    <cid>`` (one repo's blob). ``blocked`` answers from the sets of the last ``load()``.
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


def follow_feed(apply: Callable[[Event], None], settings: EdgeSettings,
                control: ControlSettings) -> list[Follower]:
    """Start following the configured takedown feed (``ATCDN_EDGE_TAKEDOWN_SOURCE``: the
    origins', by default; AWS when ``ATCDN_TAKEDOWN_FOLLOW`` is on; or none).

    With several origins, each origin's feed is followed (its own position file): each
    origin keeps its own feed, so a takedown recorded at any one of them reaches this
    edge, and one origin being down stops none of the others' takedowns. Applying an
    event twice (two origins carrying the same one) changes nothing."""
    source = settings.takedown_source or ("aws" if control.takedown_follow else "origin")
    if source == "aws":
        follower = start_follower(apply, control, settings.cache_dir / "takedown-position")
        return [follower] if follower is not None else []
    if source == "origin" and not settings.origin_token:
        log.warning("not following the origin's takedown feed: ATCDN_EDGE_ORIGIN_TOKEN is "
                    "unset (set it, or ATCDN_EDGE_TAKEDOWN_SOURCE=aws|none)")
    elif source == "origin":
        return [start_origin_follower(apply, control, origin_position(settings, url), url,
                                      settings.origin_token)
                for url in settings.origins]
    return []


def origin_position(settings: EdgeSettings, url: str) -> Path:
    """Where this edge keeps its position in ``url``'s feed (with one origin, the file
    edges have always used)."""
    name = "takedown-position-origin"
    if len(settings.origins) > 1:
        name += "-" + hashlib.sha256(url.encode()).hexdigest()[:12]
    return settings.cache_dir / name


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
    for ``did``. Both (one repo's blob): only ``cid`` (the cache holds bytes by CID;
    another holder asks again)."""
    victims = set(disk.cids_of(did)) if did and not cid else set()
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
    purges.mark(did=None if cid else did)
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
             reason: str = "", settings: EdgeSettings) -> dict[str, Any]:
    """Block (451) a blob, an account, or one repo's blob (both) on this node and purge
    it; ``restore`` lifts exactly that scope. Returns the admin routes' answer."""
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
