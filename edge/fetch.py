"""Getting a blob's bytes: from the CID's home origin (edge/origins.py), else from the
account's PDS; always verified.

The origin is the operator's own service; the PDS is a stranger's, reached through its
DID document and the SSRF guard (core/pull.py, shared with the origin's shield). Both
downloads stream into a staging while they are hashed, under the same bounds
(core/download.py): only bytes matching the CID are returned. A blob pulled from a PDS
is handed on to the origin in the background, so the next edge finds it there. What a
PDS sends is charged to its DID and to it (edge/shares.py): a stranger's quota and share.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from atcdn.core.download import Budget, Downloads
from atcdn.core.errors import AtcdnError
from atcdn.core.limits import FetchLimits
from atcdn.core.pull import PdsPull
from atcdn.core.quotas import TIER_HEADER, subject_of
from atcdn.core.settings import EdgeSettings
from atcdn.core.staging import Staging, sweep
from atcdn.edge.metrics import Metrics
from atcdn.edge.origins import Origin, Origins
from atcdn.edge.shares import Allowance, Shares

log = logging.getLogger("atcdn.edge")
ORIGIN_QUOTA_RETRY = 60  # seconds; the origin's own Retry-After is not passed down
# Errors of a connection to an origin that failed: the fetch moves to the next origin.
UNREACHABLE = frozenset({"UpstreamUnavailable", "UpstreamTimeout"})


@dataclass(frozen=True)
class Fetched:
    """A verified blob in a finished staging, and the stranger it is charged to (None:
    the origin's)."""

    staging: Staging
    allowance: Allowance | None = None


class Fetcher:
    def __init__(self, settings: EdgeSettings, metrics: Metrics, tmp_dir: Path,
                 shares: Shares | None = None) -> None:
        self.settings = settings
        self.shares = shares  # per-stranger quotas (edge/shares.py); None: none
        self.metrics = metrics
        tmp_dir.mkdir(parents=True, exist_ok=True)
        sweep(tmp_dir, min_age=3600.0)  # a hand-off may outlive its staging's lock
        self.downloads = Downloads(tmp_dir, FetchLimits.from_settings(settings),
                                   settings.fetch_retries, metrics)
        self.origins = Origins(settings, metrics)
        self.pull = PdsPull(self.downloads, plc_url=settings.plc_url,
                            allow_private_networks=settings.allow_private_networks,
                            user_agent="atcdn-edge")
        self._handoffs: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        await self.origins.aclose()
        await self.pull.aclose()

    async def fetch(self, did: str, cid: str) -> Fetched:
        """The verified bytes of ``cid`` in a finished staging (the caller discards it):
        the origin's copy, else the PDS's (handed on to the origin so the next edge finds
        it). 404 unknown, 451 taken down at the origin (never looked for elsewhere),
        502/504 upstream trouble, 429/413 past the stranger's quota or share."""
        status, fetched, pulled = await self._from_origins(did, cid)
        if fetched is not None:
            if pulled and self.shares is not None:  # a stranger's, from the origin
                return Fetched(fetched, self.shares.from_origin(did))
            return Fetched(fetched)
        if status == 451:
            raise AtcdnError(451, "TakenDown", f"{cid} is taken down")
        if status == 429:  # a shielding origin's pull quota for this account or PDS
            raise AtcdnError(429, "QuotaExceeded", "the origin's pull quota for this account"
                             " or its PDS is used up for now", retry_after=ORIGIN_QUOTA_RETRY)
        if status == 504:  # a shielding origin's pull from the PDS ran out of time
            raise AtcdnError(504, "UpstreamTimeout", "the origin timed out fetching the blob")
        if status != 404:
            raise AtcdnError(502, "UpstreamFailed", f"origin answered HTTP {status}")
        if not self.settings.pds_fallback:
            raise AtcdnError(404, "BlobNotFound", f"no blob {cid}")
        pds = await self.pull.pds(did)
        if self.shares is None:
            pds, fetched = await self.pull.pull(did, cid, pds)
            self._hand_to_origin(did, cid, pds, fetched)
            return Fetched(fetched)
        allowance = self.shares.allow(did, subject_of(pds))
        budget = Budget(allowance.bytes, lambda: allowance.refusal)
        size = 0
        try:
            pds, fetched = await self.pull.pull(did, cid, pds, budget)
            size = fetched.size
        finally:  # what arrived counts, kept or not (decoded, when more)
            self.shares.charge(allowance, max(budget.received, size))
        self._hand_to_origin(did, cid, pds, fetched)
        return Fetched(fetched, allowance)

    async def _from_origins(self, did: str, cid: str) -> tuple[int, Staging | None, bool]:
        """Ask the CID's home origin (the next one while it is down). A fetch whose
        connection fails (refused, reset, timed out) is tried once on the next origin, at
        once: nothing was sent to the client yet, and a GET is safe to repeat. A 5xx is
        an answer, retried on the same origin as with one. The flag: the origin served
        it from its pulled tier (a stranger's blob)."""
        candidates = self.origins.candidates(cid)
        if len(candidates) == 1:
            return await self._get_origin(candidates[0], did, cid)
        first, second = candidates[:2]
        home = self.origins.home(cid)
        if first is not home:
            self.metrics.origin_failovers.labels(home.url, "down").inc()
        try:
            return await self._get_origin(first, did, cid, failover=True)
        except AtcdnError as exc:
            if exc.error not in UNREACHABLE:
                raise
            self.origins.failed(first, f"origin {first.url}: {exc.message}")
            self.metrics.origin_failovers.labels(first.url, "failed").inc()
            log.warning("fetching %s from %s failed (%s); trying %s", cid, first.url,
                        exc.message, second.url)
        return await self._get_origin(second, did, cid)

    async def _get_origin(self, origin: Origin, did: str, cid: str, *,
                          failover: bool = False) -> tuple[int, Staging | None, bool]:
        """One origin's answer, counted per origin; ``failover``: a failed connection is
        not retried here (the caller moves to the next origin)."""
        results = self.metrics.origin_requests.labels
        tiers: list[str] = []
        try:
            status, fetched = await self.downloads.get(
                origin.client, f"/blob/{cid}", {"did": did}, cid, "origin",
                retry_connections=not failover,
                seen=lambda response: tiers.append(response.headers.get(TIER_HEADER, "")))
        except AtcdnError as exc:
            results(origin.url, exc.error).inc()
            raise
        results(origin.url, str(status)).inc()
        if status < 500:
            self.origins.passed(origin)
        return status, fetched, tiers[-1:] == ["pulled"]

    def _hand_to_origin(self, did: str, cid: str, pds: str, staging: Staging) -> None:
        """Give a PDS-fetched blob to its home origin (the next one while the home is
        down) in the background (needs a token): it lands in that origin's bounded
        *pulled* tier, charged to ``did`` and ``pds``."""
        if not self.settings.origin_token:
            return
        copy = staging.path.with_suffix(".handoff.part")  # swept like a staging if orphaned
        os.link(staging.path, copy)
        origin = self.origins.candidates(cid)[0]
        task = asyncio.create_task(self._put(origin.client, did, cid, pds, copy))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    async def _put(self, client: httpx.AsyncClient, did: str, cid: str, pds: str,
                   path: Path) -> None:
        try:
            response = await client.put(
                f"/handoff/{cid}", params={"did": did, "pds": pds}, content=_chunks(path),
                headers={"authorization": f"Bearer {self.settings.origin_token}",
                         "content-type": "application/octet-stream",
                         "content-length": str(path.stat().st_size)})
            if response.status_code not in (200, 201):
                log.warning("origin %s refused %s: HTTP %s %s", client.base_url, cid,
                            response.status_code, response.text[:200])
        except httpx.HTTPError as exc:
            log.warning("handing %s to the origin %s failed: %r", cid, client.base_url, exc)
        finally:
            path.unlink(missing_ok=True)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk
