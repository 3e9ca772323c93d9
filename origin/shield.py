"""The origin as the shield: a blob it lacks is pulled from its author's PDS, once.

With ``pds_pull`` on, a read naming a DID (``GET``/``HEAD /blob/{cid}?did=``, getBlob)
that finds the blob not stored, or stored but not known to be held by that DID, makes the
origin resolve the DID and pull the blob from that DID's PDS (core/pull.py: the SSRF
guard, bounded bodies, streaming verification, failures remembered) into the pulled tier
(origin/pulled.py), under its quotas. The DID becomes a holder only because its own PDS
served the right bytes. Taken-down blobs and accounts are answered before any pull.

Single-flight (core/flight.py) across the origin's workers and processes, keyed by
(CID, DID): N concurrent misses cost the PDS one getBlob, and one DID's failure (a PDS
that lies, stalls, or a DID naming none) never answers a request naming another DID. The
work re-checks the index under the node-wide lock, so a process that waited finds the
other's result. Every wait ends at ``pull_deadline`` seconds (504). A blob the PDS does
not have is remembered for ``ABSENT_FOR`` seconds (per process).
"""

from __future__ import annotations

from atcdn.core.download import Budget, Downloads
from atcdn.core.errors import AtcdnError
from atcdn.core.flight import SingleFlight
from atcdn.core.limits import FetchLimits
from atcdn.core.pull import PdsPull
from atcdn.core.settings import OriginSettings
from atcdn.origin.index import Index
from atcdn.origin.metrics import Metrics
from atcdn.origin.pulled import PulledTier
from atcdn.origin.store import BlobStore
from cachetools import TTLCache

RETRIES = 2  # of a getBlob that failed with 5xx or a dropped connection
ABSENT_FOR = 10.0


class Shield:
    def __init__(self, settings: OriginSettings, index: Index, store: BlobStore,
                 pulled: PulledTier, metrics: Metrics) -> None:
        self.index = index
        self.store = store
        self.pulled = pulled
        self.metrics = metrics
        self.flight = SingleFlight(settings.data_dir / "locks" / "pull",
                                   deadline=settings.pull_deadline, proceed_on_timeout=False)
        downloads = Downloads(pulled.store.tmp_dir, FetchLimits.from_origin(settings), RETRIES,
                              metrics)
        self.pull = PdsPull(downloads, plc_url=settings.plc_url,
                            allow_private_networks=settings.allow_private_networks,
                            user_agent="atcdn-origin")
        self._absent: TTLCache[tuple[str, str], AtcdnError] = TTLCache(10_000, ABSENT_FOR)

    async def aclose(self) -> None:
        await self.pull.aclose()

    async def ensure(self, cid: str, did: str) -> None:
        """Make ``cid`` servable under ``did`` if it is not: pulled from ``did``'s PDS.
        AtcdnError 404 (the PDS has no such blob), 429 (quota), 502/503/504."""
        if await self._servable(cid, did):
            return
        absent = self._absent.get((cid, did))
        if absent is not None:
            raise absent
        try:
            await self.flight.run(f"pull/{cid}/{did}", lambda: self._pull(cid, did))
        except AtcdnError as exc:
            if exc.status == 404:
                self._absent[(cid, did)] = exc
            raise

    async def _servable(self, cid: str, did: str) -> bool:
        if self.index.authorize(cid, did) == "not-held":
            return False
        return self.index.get(cid) is not None or await self.store.size(cid) is not None

    async def _pull(self, cid: str, did: str) -> None:
        if await self._servable(cid, did):  # another worker pulled it while we waited
            return
        pds = await self.pull.pds(did)
        quota = self.pulled.quota(did, pds)
        if quota.left <= 0:
            raise self.pulled.refuse(quota)
        budget = Budget(quota.left, quota.refusal)
        try:
            _, staging = await self.pull.pull(did, cid, pds, budget)
        except AtcdnError as exc:
            if exc.status == 429:
                self.metrics.quota_refusals.inc()
            raise
        finally:  # bytes received count, stored or not
            self.pulled.charge(quota, budget.received)
        if self.index.get(cid) is not None:  # the bytes are here: only the holder is news
            staging.discard()
            await self.pulled.hold(cid, did)
            return
        await self.pulled.keep(staging, cid, did)
