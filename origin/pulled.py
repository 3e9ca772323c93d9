"""The pulled tier: blobs a stranger's request brought in from a PDS (an edge's hand-off,
or the origin's own pull: origin/shield.py), kept apart from what operators pinned.

Bounded (``pulled_max_bytes``, least recently used out) and always on local disk, under
per-account and per-PDS quotas of bytes received per window (429 beyond): whoever names
a DID or runs a PDS can make the origin pull, so each of them can fill only a share.
A pulled blob records its DID as a holder: only that DID's own PDS served it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from atcdn.core.errors import AtcdnError
from atcdn.core.mime import sniff
from atcdn.core.quotas import Quotas, subject_of
from atcdn.core.settings import OriginSettings
from atcdn.core.staging import Staging
from atcdn.origin.holders import SharedHolders
from atcdn.origin.index import BlobMeta, Index
from atcdn.origin.metrics import Metrics
from atcdn.origin.store import FileStore


@dataclass(frozen=True)
class Quota:
    """What one pull (or hand-off) by ``did`` from a PDS may still bring in."""

    left: int  # bytes, the smaller of the account's and the PDS's
    whose: str  # the subject that binds
    window: int
    subjects: tuple[str, ...]  # charged with what arrives
    retry_after: int

    def refusal(self) -> AtcdnError:
        return AtcdnError(429, "QuotaExceeded",
                          f"the pulled-blob quota of {self.whose} is used up for this window; "
                          "nothing stored", headers={"Retry-After": str(self.retry_after)})


class PulledTier:
    def __init__(self, settings: OriginSettings, index: Index, metrics: Metrics,
                 holders: SharedHolders | None = None) -> None:
        self.settings = settings
        self.index = index
        self.metrics = metrics
        self.holders = holders  # shared with the other origins over one bucket, if any
        self.store = FileStore(settings.data_dir / "pulled")
        self.rule = Quotas(settings.pulled_quota_did, settings.pulled_quota_pds,
                           settings.pulled_quota_window)  # the arithmetic: core/quotas.py

    def quota(self, did: str, pds_url: str) -> Quota:
        """The quota of ``did`` and of its PDS (``pds_url``) in the current window."""
        now = time.time()
        window = self.rule.window_of(now)
        pds = subject_of(pds_url)
        left, whose = self.rule.left(did, pds, lambda subject: self.index.usage(subject, window))
        return Quota(left, whose, window, (did, pds), self.rule.retry_after(now))

    def refuse(self, quota: Quota) -> AtcdnError:
        """The 429 of a used-up quota, counted."""
        self.metrics.quota_refusals.inc()
        return quota.refusal()

    def charge(self, quota: Quota, received: int) -> None:
        """Count bytes received (stored or not) against the quota's subjects."""
        self.index.charge(list(quota.subjects), quota.window, received)

    async def hold(self, cid: str, did: str) -> None:
        """Record that ``did``'s own PDS served ``cid`` (the bytes are already here)."""
        if self.holders is not None:
            await self.holders.share(cid, did, "pds")
        self.index.add_holder(cid, did, "pds")

    async def keep(self, staging: Staging, cid: str, did: str) -> tuple[BlobMeta, bool]:
        """Store a received blob (verified against ``cid`` on commit, 422 otherwise),
        held by ``did``, then evict down to the budget; (meta, whether it was new)."""
        with self.metrics.verifying():
            created = await self.store.commit(staging, cid)
        if self.holders is not None:
            await self.holders.share(cid, did, "pds")
        meta = self.index.record(cid, staging.size, sniff(staging.head), did, via="pds",
                                 pinned=False)
        for victim in self.index.evict_pulled(self.settings.pulled_max_bytes):
            self.store.path(victim).unlink(missing_ok=True)
        return meta, created
