"""One blob reference, from a record to the origin: screened, skipped when the origin has
it, fetched from the author's PDS (politely, verified while streaming), stored.

``BlobIngester.ingest`` never raises for anything a stranger did: it returns an outcome,
``stored`` or a skip/failure reason (the metric label), and logs each kind of failure
quietly. Only ``OriginAuthError`` (a wrong token: nothing can work) escapes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx
from atcdn.core import cid as cids
from atcdn.core.errors import AtcdnError, BlockedAddress
from atcdn.core.resolver import Resolver
from atcdn.ingest.blobrefs import BlobRef, mime_allowed
from atcdn.ingest.metrics import SKIPS, IngestMetrics
from atcdn.ingest.origin_api import OriginAuthError, OriginClient, OriginRefused
from atcdn.ingest.politeness import HostLimits, backoff
from atcdn.ingest.quietlog import QuietLog
from atcdn.ingest.spool import Spool, read_chunks

log = logging.getLogger("atcdn.ingest")

RETRY_AFTER_CAP = 60.0


class GiveUp(Exception):
    """A blob ingest will not fetch: ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Retry(Exception):
    """A failure worth another attempt, after ``delay`` seconds if the PDS said so."""

    def __init__(self, reason: str, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay = delay


@dataclass(frozen=True)
class Limits:
    mime_patterns: list[str]
    max_bytes: int
    retries: int
    retry_backoff: float
    deadline: float


class BlobIngester:
    def __init__(self, *, origin: OriginClient, resolver: Resolver, pds_client: httpx.AsyncClient,
                 hosts: HostLimits, spool: Spool, limits: Limits, metrics: IngestMetrics) -> None:
        self.origin = origin
        self.resolver = resolver
        self.pds_client = pds_client
        self.hosts = hosts
        self.spool = spool
        self.limits = limits
        self.metrics = metrics
        self.quiet = QuietLog(log)
        self._in_flight: dict[str, asyncio.Future[str]] = {}
        self.stored_bytes = 0

    def screen(self, ref: BlobRef) -> str | None:
        """Why ``ref`` is not worth a request at all (a skip reason), or None."""
        try:
            cids.parse(ref.cid)
        except cids.CIDError:
            return "invalid_cid"
        if ref.mime is not None and not mime_allowed(ref.mime, self.limits.mime_patterns):
            return "mime"  # (no claim, as from listBlobs: the PDS's Content-Type decides)
        if ref.size is not None and ref.size > self.limits.max_bytes:
            return "too_large"
        return None

    async def ingest(self, did: str, ref: BlobRef, pds: str | None = None) -> str:
        """Bring ``ref`` (referenced by ``did``) into the origin; the outcome label.
        ``pds``: the PDS to ask (backfill knows it); else ``did``'s document says."""
        outcome = self.screen(ref)
        if outcome is None:
            running = self._in_flight.get(ref.cid)
            if running is not None:  # the same blob in two records at once: one fetch
                await asyncio.shield(running)
                outcome = "duplicate"
            else:
                future = self._in_flight[ref.cid] = asyncio.get_running_loop().create_future()
                try:
                    outcome = await self._ingest(did, ref, pds)
                finally:
                    future.set_result("done")
                    del self._in_flight[ref.cid]
        self.metrics.outcome(outcome)
        return outcome

    async def _ingest(self, did: str, ref: BlobRef, pds: str | None) -> str:
        cid = ref.cid
        try:
            presence = await self.origin.presence(cid, did)
            if presence != "missing":
                return presence
            path = self.spool.get(cid) or await self.fetch(did, cid, pds,
                                                           check_mime=ref.mime is None)
            size = path.stat().st_size
            await self.origin.put(cid, did, lambda: read_chunks(path), size)
            self.spool.remove(cid)
            self.stored_bytes += size
            return "stored"
        except GiveUp as exc:
            if exc.reason in SKIPS:
                log.debug("skipped blob %s of %s: %s", cid, did, exc)
            else:
                self.quiet.warning(exc.reason, "gave up on blob %s of %s: %s (%s)",
                                   cid, did, exc, exc.reason)
            return exc.reason
        except OriginAuthError:
            raise
        except OriginRefused as exc:
            self.quiet.warning("origin_refused", "origin refused blob %s of %s: %s", cid, did, exc)
            return "origin_refused"

    async def fetch(self, did: str, cid: str, pds: str | None = None, *,
                    check_mime: bool = False) -> Path:
        """Download ``cid`` from ``did``'s PDS into the spool, verified; retried politely.
        ``check_mime``: apply the MIME filter to the PDS's Content-Type."""
        attempt = 0
        while True:
            attempt += 1
            try:
                base = pds or await self._pds_of(did)
                async with self.hosts.slot(urlsplit(base).netloc):
                    with anyio.fail_after(self.limits.deadline):
                        return await self._download(base, did, cid, check_mime)
            except Retry as exc:
                problem = exc
            except TimeoutError:
                problem = Retry("timeout", f"no complete answer within {self.limits.deadline}s")
            except httpx.TimeoutException as exc:
                problem = Retry("timeout", f"{type(exc).__name__}")
            except BlockedAddress as exc:
                raise GiveUp("blocked_address", str(exc)) from None
            except httpx.HTTPError as exc:
                problem = Retry("pds_unavailable", f"{type(exc).__name__}: {exc}")
            if attempt > self.limits.retries:
                raise GiveUp(problem.reason, f"{problem} (after {attempt} attempts)")
            delay = backoff(attempt, self.limits.retry_backoff)
            await asyncio.sleep(max(delay, problem.delay or 0.0))

    async def _pds_of(self, did: str) -> str:
        try:
            return await self.resolver.pds(did)
        except AtcdnError as exc:
            if exc.error == "ForbiddenAddress":
                raise GiveUp("blocked_address", exc.message) from None
            if exc.status == 404:
                raise GiveUp("no_pds", exc.message) from None
            raise Retry("did_unresolved", exc.message) from None

    async def _download(self, base: str, did: str, cid: str, check_mime: bool) -> Path:
        url = f"{base}/xrpc/com.atproto.sync.getBlob"
        cap = self.limits.max_bytes
        async with self.pds_client.stream("GET", url, params={"did": did, "cid": cid},
                                          headers={"accept-encoding": "identity"}) as res:
            if res.status_code == 429 or res.status_code >= 500:
                raise Retry("pds_unavailable", f"HTTP {res.status_code}",
                            _retry_after(res.headers.get("retry-after")))
            if res.status_code != 200:
                raise GiveUp("pds_refused", f"getBlob answered HTTP {res.status_code}")
            if res.headers.get("content-encoding", "identity").lower() != "identity":
                raise GiveUp("pds_refused", "getBlob answered with a content-encoding")
            mime = res.headers.get("content-type", "").split(";")[0].strip()
            if check_mime and not mime_allowed(mime, self.limits.mime_patterns):
                raise GiveUp("mime", f"the PDS says it is {mime[:100]!r}")
            declared = res.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise GiveUp("oversized", f"{declared} bytes; the cap is {cap}")
            partial = self.spool.partial(cid)
            verifier = cids.Verifier()
            try:
                async with await anyio.open_file(partial, "wb") as out:
                    async for chunk in res.aiter_raw():
                        verifier.update(chunk)
                        if verifier.size > cap:
                            raise GiveUp("oversized", f"more than {cap} bytes")
                        await out.write(chunk)
                if not verifier.matches(cid):
                    raise GiveUp("cid_mismatch",
                                 f"the PDS sent bytes hashing to {verifier.cid}")
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        self.metrics.fetched.inc()
        self.metrics.fetched_bytes.inc(verifier.size)
        return self.spool.keep(partial, cid)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(RETRY_AFTER_CAP, float(value))
