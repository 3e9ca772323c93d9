"""What one stranger can make this edge fetch and keep (issue 9, hole 1).

A blob the origin does not hold as the operator's is a stranger's: fetched from the PDS
its DID names. Its bytes are charged to the DID and to the PDS (``core/quotas.py`` does the arithmetic, as for
the origin's pulled tier):

- **received**: bytes per quota window, per DID (``ATCDN_EDGE_QUOTA_DID``) and per PDS
  (``ATCDN_EDGE_QUOTA_PDS``), counted on the wire and decoded, whichever is more, stored
  or not. A fetch is cut where the quota ends; once it is used up, 429
  ``QuotaExceeded`` with ``Retry-After`` at the next window.
- **kept**: the disk-tier bytes of the CIDs charged to a DID (sources and their
  renditions) are at most ``ATCDN_EDGE_SHARE_DID`` of the tier's budget, those charged
  to a PDS at most ``ATCDN_EDGE_SHARE_PDS``. Past its share a subject's *own* oldest
  CIDs are evicted, so however much it fetches, a stranger never pushes out more than
  its share of everyone else's entries. A blob larger than a share is not fetched
  (413 ``LargerThanShare``).

Blobs the origin holds as pinned (operator pushes, ingest) are nobody's and not counted.
The counts are a SQLite file beside the cache, shared by the node's workers; a CID the
tier evicted on its own still counts until its subject passes its share (it then goes
first, being older), so the counts never fall below what is held. Rows of CIDs no longer
cached are pruned every ``PRUNE_EVERY`` charges.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atcdn.core.database import Database
from atcdn.core.errors import AtcdnError
from atcdn.core.quotas import Quotas, over_budget

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    subject TEXT NOT NULL,      -- 'did:...' or 'pds:<url>'
    window INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (subject, window)
);
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of charging: oldest evicted first
    cid TEXT NOT NULL UNIQUE,
    did TEXT NOT NULL,
    pds TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS held_did ON held (did, seq);
CREATE INDEX IF NOT EXISTS held_pds ON held (pds, seq);
"""
ORIGIN_PULLED = "pds:(the origin's pulled tier)"  # see Shares.from_origin
ENTRY_COST = 4096  # the least an entry is charged: many tiny blobs are not free
PRUNE_EVERY = 10_000


@dataclass(frozen=True)
class Allowance:
    """What one fetch for a stranger may receive, and whom it is charged to."""

    did: str
    pds: str  # a quota subject, ``pds:<url>``
    bytes: int
    refusal: AtcdnError  # the answer when the body would pass ``bytes``


class Shares:
    def __init__(self, path: Path, quota: Quotas, share_did: int, share_pds: int,
                 evict: Callable[[str], object], cached: Callable[[str], bool]) -> None:
        self.quota = quota
        self.share_did = max(1, share_did)
        self.share_pds = max(1, share_pds)
        self.evict = evict  # drops every disk-tier entry of a CID
        self.cached = cached  # whether the disk tier holds anything of a CID
        self._db = Database(path, SCHEMA)
        self._charged = 0

    def allow(self, did: str, pds: str) -> Allowance:
        """What a fetch of ``did``'s blob from ``pds`` may receive; 429 when nothing."""
        now = time.time()
        window = self.quota.window_of(now)
        left, whose = self.quota.left(did, pds, lambda subject: self._used(subject, window))
        if left <= 0:
            raise self.quota.exceeded(whose, now, "fetch")
        share = min(self.share_did, self.share_pds)
        if share < left:
            return Allowance(did, pds, share, AtcdnError(
                413, "LargerThanShare",
                f"the blob is larger than the share of this edge's cache one account may "
                f"hold ({share} bytes)"))
        return Allowance(did, pds, left, self.quota.exceeded(whose, now, "fetch"))

    def from_origin(self, did: str) -> Allowance:
        """Whom a stranger's blob served by the origin's pulled tier is kept for: ``did``
        and, as the origin does not name the PDS, one subject for all such blobs (so
        together they hold at most a PDS's share). Their bytes were counted against the
        origin's quotas when it pulled them; here only the share of the tier applies."""
        return Allowance(did, ORIGIN_PULLED, 0, AtcdnError(
            429, "QuotaExceeded", "not charged: counted by the origin"))

    def _used(self, subject: str, window: int) -> int:
        rows = self._db.run("SELECT bytes FROM usage WHERE subject = ? AND window = ?",
                            (subject, window))
        return rows[0][0] if rows else 0

    def charge(self, allowance: Allowance, size: int) -> None:
        """Count ``size`` bytes fetched (stored or not) in this window."""
        window = self.quota.window_of(time.time())
        with self._db.write() as db:
            for subject in (allowance.did, allowance.pds):
                db.execute("INSERT INTO usage VALUES (?, ?, ?) ON CONFLICT (subject, window) "
                           "DO UPDATE SET bytes = bytes + excluded.bytes",
                           (subject, window, size))
            db.execute("DELETE FROM usage WHERE window < ?", (window,))

    def keep(self, cid: str, size: int, allowance: Allowance | None = None) -> list[str]:
        """Charge ``size`` bytes the disk tier now holds of ``cid``: to ``allowance``'s
        DID and PDS for a fetched source, else to whoever its source was charged to (a
        rendition; nothing when nobody). Evicts the subjects' oldest CIDs past their
        shares, never ``cid`` itself; returns the CIDs evicted."""
        size = max(size, ENTRY_COST)
        with self._db.write() as db:
            if allowance is not None:
                db.execute("DELETE FROM held WHERE cid = ?", (cid,))
                db.execute("INSERT INTO held (cid, did, pds, size) VALUES (?, ?, ?, ?)",
                           (cid, allowance.did, allowance.pds, size))
                did, pds, total = allowance.did, allowance.pds, size
            else:
                row = db.execute("SELECT did, pds, size FROM held WHERE cid = ?",
                                 (cid,)).fetchone()
                if row is None:
                    return []
                did, pds, total = row[0], row[1], row[2] + size
                db.execute("UPDATE held SET size = ? WHERE cid = ?", (total, cid))
            victims: list[str] = []
            for column, subject, share in (("did", did, self.share_did),
                                           ("pds", pds, self.share_pds)):
                rows = db.execute(f"SELECT cid, size FROM held WHERE {column} = ? "  # noqa: S608
                                  "AND cid != ? ORDER BY seq", (subject, cid)).fetchall()
                rows = [row for row in rows if row[0] not in victims]
                victims += over_budget(rows, total + sum(s for _, s in rows), share)
            db.executemany("DELETE FROM held WHERE cid = ?", [(v,) for v in victims])
        for victim in victims:
            self.evict(victim)
        self._charged += allowance is not None
        if self._charged >= PRUNE_EVERY:
            self._charged = 0
            self.prune()
        return victims

    def owner(self, cid: str) -> tuple[str, str] | None:
        """The (DID, PDS) ``cid``'s source is charged to; None when nobody's. The video
        space keeps a stranger's transcodes within the same shares (edge/video_space.py)."""
        rows = self._db.run("SELECT did, pds FROM held WHERE cid = ?", (cid,))
        return (rows[0][0], rows[0][1]) if rows else None

    def prune(self) -> int:
        """Forget the CIDs the disk tier no longer holds anything of."""
        cids = [row[0] for row in self._db.run("SELECT cid FROM held")]
        gone = [(cid,) for cid in cids if not self.cached(cid)]
        self._db.many("DELETE FROM held WHERE cid = ?", gone)
        return len(gone)

    def close(self) -> None:
        self._db.close()
