"""Source blobs: disk tier, else fetched (origin, else PDS), verified, then cached.

The one way ``/blob``, ``/img`` and ``/watch`` get a blob's bytes. A fetch runs once per
node for each (CID, DID): the answer depends on the DID (the origin's account
takedowns, the PDS the DID names), so requests for the same CID under another DID never
wait for, or get, this one's answer (core/flight.py). A source that was purged or taken
down while it was being fetched does not stay in the cache (edge/gate.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from atcdn.core.errors import AtcdnError
from atcdn.core.files import write_atomic
from atcdn.edge import urls
from atcdn.edge.cache import DiskTier, Value
from atcdn.edge.fetch import Fetcher
from atcdn.core.flight import SingleFlight
from atcdn.edge.gate import Gate
from atcdn.edge.shares import Shares

log = logging.getLogger("atcdn.edge")
UNCACHED_MAX = 64 * 1024 * 1024  # a source this small is still served when the disk is full


def purged_meanwhile(cid: str) -> AtcdnError:
    return AtcdnError(503, "Purged", f"{cid} was purged while it was fetched; retry",
                      retry_after=1)


class Sources:
    def __init__(self, disk: DiskTier, fetcher: Fetcher, flight: SingleFlight, gate: Gate,
                 video_dir: Path, shares: Shares | None = None) -> None:
        self.disk = disk
        self.shares = shares  # a stranger's sources are kept within its share
        self.fetcher = fetcher
        self.flight = flight
        self.gate = gate
        self.video_dir = video_dir  # small sources are copied to {video_dir}/sources/{cid}

    async def get(self, did: str, cid: str) -> tuple[Value, str]:
        """The verified source (bytes, or the path of its file) and where it came from:
        "disk" or "miss"."""
        key = urls.source_key(cid)
        value = self.disk.get(key)
        if value is not None:
            return value, "disk"
        started = self.gate.clock()
        return await self.flight.run(f"{key}/{did}",
                                     lambda: self._fetch(did, cid, key, started)), "miss"

    async def _fetch(self, did: str, cid: str, key: str, started: int) -> Value:
        value = self.disk.get(key)  # fetched by another process while we waited
        if value is not None:
            return value
        fetched = await self.fetcher.fetch(did, cid)
        staging = fetched.staging
        uncached: bytes | None = None
        try:
            self.disk.put_source(key, staging, cid)
        except OSError as exc:  # the cache's disk is full: serve it anyway, uncached
            if staging.size > UNCACHED_MAX:
                raise AtcdnError(507, "InsufficientStorage",
                                 f"this edge's cache disk is full ({exc.strerror})") from None
            log.warning("cache disk full: %s served without caching (%s)", cid, exc.strerror)
            uncached = await asyncio.to_thread(staging.path.read_bytes)
        finally:
            staging.discard()
        if uncached is None:
            self.disk.remember_owner(did, cid)
            if fetched.allowance is not None and self.shares is not None:
                self.shares.keep(cid, staging.size, fetched.allowance)
        if self.gate.purged_since(started, did, cid):
            self.disk.delete(key)
            self.gate.recheck(did, cid)
            raise purged_meanwhile(cid)
        value = uncached if uncached is not None else self.disk.get(key)
        if value is None:
            raise AtcdnError(507, "CacheFull", "the blob does not fit this edge's cache")
        return value

    async def file(self, did: str, cid: str) -> Path:
        """The verified source as a file, for the transcoder."""
        started = self.gate.clock()
        value, _ = await self.get(did, cid)
        if isinstance(value, str):
            return Path(value)
        path = self.video_dir / "sources" / cid  # small blobs live in the cache index
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomic, path, value)
            if self.gate.purged_since(started, did, cid):
                path.unlink(missing_ok=True)
                self.gate.recheck(did, cid)
                raise purged_meanwhile(cid)
        return path


def read_source(value: Value, limit: int) -> bytes:
    """A source's bytes for a transform, refused (413) beyond ``limit``."""
    size = len(value) if isinstance(value, bytes) else os.path.getsize(value)
    if size > limit:
        raise AtcdnError(413, "SourceTooLarge", f"source is {size} bytes, limit {limit}")
    if isinstance(value, bytes):
        return value
    with open(value, "rb") as fh:
        return fh.read()
