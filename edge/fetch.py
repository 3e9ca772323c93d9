"""Getting a blob's bytes: from the origin, else from the account's PDS; always verified.

Every byte is hashed while it streams to a temporary file (a ``Staging``, as the origin
receives uploads); only a staging whose sha256 matches the CID is ever returned, so
nothing unverified can be transformed, cached or served. A mismatch is counted, logged
and answered 502.

The origin is the operator's own service; everything reached through a DID document goes
through the SSRF guard (``atcdn.core.ssrf``). Bodies are read raw and decoded by
``atcdn.core.bodies``: the bytes received on the wire and the decoded bytes are both held
to ``max_fetch_bytes``, and a body that inflates like a bomb is refused. Every fetch in
progress on the node shares ``fetch_temp_size`` bytes of temporary space (503 beyond),
and a PDS's failures are remembered (``edge/refusals.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from atcdn.core.accesslog import current_id
from atcdn.core.bodies import (
    BodyError,
    BodyTooLarge,
    InflatedTooFar,
    Inflater,
    iter_body,
)
from atcdn.core.errors import AtcdnError, BlockedAddress
from atcdn.core.limits import FetchLimits
from atcdn.core.quotas import TIER_HEADER, subject_of
from atcdn.core.resolver import Resolver
from atcdn.core.settings import EdgeSettings
from atcdn.core.ssrf import public_client
from atcdn.core.staging import Staging, sweep
from atcdn.edge.metrics import Metrics
from atcdn.edge.refusals import Refusals
from atcdn.edge.shares import Allowance, Shares

log = logging.getLogger("atcdn.edge")
RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
TEMP_CHECK_EVERY = 256 * 1024  # bytes written between looks at the node's temp usage
UNRESOLVED = "pds:unresolved"  # the PDS charged for a pulled blob whose DID does not resolve


@dataclass(frozen=True)
class Fetched:
    """A verified blob in a finished staging, and the stranger it is charged to (None:
    the operator's own, pinned at the origin)."""

    staging: Staging
    allowance: Allowance | None = None


def _timeout(limits: FetchLimits) -> httpx.Timeout:
    return httpx.Timeout(limits.timeout, connect=limits.connect_timeout)


def origin_client(settings: EdgeSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=settings.origin.rstrip("/"),
                             timeout=_timeout(FetchLimits.from_settings(settings)),
                             trust_env=False, limits=httpx.Limits(max_connections=64),
                             event_hooks={"request": [_pass_request_id]})


async def _pass_request_id(request: httpx.Request) -> None:
    """The origin logs our request's ID, so one ID follows a miss through both logs."""
    rid = current_id()
    if rid is not None:
        request.headers["x-request-id"] = rid


class Fetcher:
    def __init__(self, settings: EdgeSettings, metrics: Metrics, tmp_dir: Path,
                 shares: Shares | None = None) -> None:
        self.settings = settings
        self.shares = shares  # per-stranger quotas (edge/shares.py); None: none
        self.limits = FetchLimits.from_settings(settings)
        self.metrics = metrics
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        sweep(tmp_dir, min_age=3600.0)  # a hand-off may outlive its staging's lock
        self.origin = origin_client(settings)
        self.public = public_client(
            allow_private_networks=settings.allow_private_networks,
            timeout=_timeout(self.limits), max_redirects=self.limits.max_redirects,
            user_agent="atcdn-edge")
        self.resolver = Resolver(self.public, settings.plc_url,
                                 deadline=self.limits.resolve_timeout,
                                 max_document=self.limits.did_document_bytes)
        self.refusals = Refusals()
        self._handoffs: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        await self.origin.aclose()
        await self.public.aclose()

    async def fetch(self, did: str, cid: str) -> Fetched:
        """The verified bytes of ``cid`` in a finished staging (the caller discards it):
        the origin's copy, else the PDS's (handed on to the origin so the next edge finds
        it). 404 unknown, 451 taken down at the origin (never looked for elsewhere),
        502/504 upstream trouble, 429/413 past the stranger's quota or share."""
        status, fetched, pulled = await self._get(self.origin, f"/blob/{cid}", {"did": did},
                                                  cid, "origin")
        if fetched is not None:
            if not pulled or self.shares is None:
                return Fetched(fetched)
            return Fetched(fetched, await self._charge_pulled(did, fetched))
        if status == 451:
            raise AtcdnError(451, "TakenDown", f"{cid} is taken down")
        if status != 404:
            raise AtcdnError(502, "UpstreamFailed", f"origin answered HTTP {status}")
        if not self.settings.pds_fallback:
            raise AtcdnError(404, "BlobNotFound", f"no blob {cid}")
        pds = await self.resolver.pds(did)
        self.refusals.check(pds, cid)
        allowance = self.shares.allow(did, subject_of(pds)) if self.shares else None
        try:
            status, fetched, _ = await self._get(
                self.public, f"{pds}/xrpc/com.atproto.sync.getBlob", {"did": did, "cid": cid},
                cid, "pds", allowance)
        except AtcdnError as exc:
            self.refusals.failed(pds, cid, exc)
            raise
        if fetched is None:
            # A PDS answers unknown (and taken-down) blobs with 400, like the AppView: 404.
            if 400 <= status < 500:
                raise AtcdnError(404, "BlobNotFound", f"no blob {cid} for {did}")
            raise AtcdnError(502, "UpstreamFailed", f"PDS answered HTTP {status}")
        self._hand_to_origin(did, cid, pds, fetched)
        return Fetched(fetched, allowance)

    async def _charge_pulled(self, did: str, staging: Staging) -> Allowance:
        """A blob of the origin's pulled tier is a stranger's: charged like a PDS fetch
        (to the PDS ``did`` names now), refused when its quota was used up."""
        assert self.shares is not None
        try:
            pds = subject_of(await self.resolver.pds(did))
        except AtcdnError:
            pds = UNRESOLVED
        try:
            allowance = self.shares.allow(did, pds)
            self.shares.charge(allowance, staging.size)
            if staging.size > allowance.bytes:
                raise allowance.refusal
        except AtcdnError:
            staging.discard()
            raise
        return allowance

    async def _get(self, client: httpx.AsyncClient, url: str, params: dict[str, str],
                   cid: str, source: str, allowance: Allowance | None = None
                   ) -> tuple[int, Staging | None, bool]:
        """(status, verified file or None, whether the origin said it is of its pulled
        tier); retries 5xx and connection errors, never 4xx. ``allowance``: the stranger's
        quota, charged with what arrives, and where the body is cut."""
        counter = self.metrics.origin_fetches if source == "origin" else self.metrics.pds_fetches
        started = time.monotonic()
        for attempt in range(self.settings.fetch_retries + 1):
            if attempt:
                await asyncio.sleep(0.1 * 2**attempt)
            try:
                async with asyncio.timeout(self.limits.timeout):
                    async with client.stream("GET", url, params=params) as response:
                        if response.status_code >= 500 and attempt < self.settings.fetch_retries:
                            continue
                        if response.status_code != 200:
                            counter.labels(str(response.status_code)).inc()
                            return response.status_code, None, False
                        pulled = response.headers.get(TIER_HEADER) == "pulled"
                        fetched = await self._save(response, cid, source, allowance)
            except BlockedAddress as exc:
                counter.labels("blocked").inc()
                raise AtcdnError(502, "ForbiddenAddress", str(exc)) from None
            except (httpx.TimeoutException, TimeoutError):
                counter.labels("timeout").inc()
                raise AtcdnError(504, "UpstreamTimeout", f"{source} timed out") from None
            except RETRYABLE as exc:
                if attempt < self.settings.fetch_retries:
                    continue
                counter.labels("unreachable").inc()
                raise AtcdnError(502, "UpstreamUnavailable", f"{source}: {exc!r}") from None
            except httpx.HTTPError as exc:
                counter.labels("error").inc()
                raise AtcdnError(502, "UpstreamFailed", f"{source}: {exc!r}") from None
            counter.labels("200").inc()
            self.metrics.fetch_seconds.labels(source).observe(time.monotonic() - started)
            return 200, fetched, pulled
        raise AssertionError("unreachable")

    async def _save(self, response: httpx.Response, cid: str, source: str,
                    allowance: Allowance | None = None) -> Staging:
        """Stream into a staging while hashing; keep it only if it is ``cid``."""
        limit = self.limits.max_bytes
        too_large = AtcdnError(413, "BlobTooLarge", f"blob exceeds {limit} bytes")
        if allowance is not None and allowance.bytes < limit:
            limit, too_large = allowance.bytes, allowance.refusal
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large
        expected = int(declared) if declared and declared.isdigit() else 0
        self._reserve(expected)
        try:
            inflater = Inflater(response.headers.get("content-encoding"), limit)
        except BodyError as exc:
            raise AtcdnError(502, "UndecodableBody", f"{source}: {exc}") from None
        staging = Staging(self.tmp_dir, reserve=expected)
        checked = 0
        try:
            async for chunk in iter_body(response, inflater):
                await staging.write(chunk)
                staging.reserve(staging.size)  # what arrived counts at once, for every worker
                if staging.size - checked >= TEMP_CHECK_EVERY:
                    checked = staging.size
                    self._reserve(0)
            await staging.finish()
            if not staging.matches(cid):
                self.metrics.verification_failures.labels(source).inc()
                log.warning("verification failed: %s sent %s for %s", source,
                            staging.verifier.cid, cid)
                raise AtcdnError(502, "VerificationFailed",
                                 f"{source} bytes do not match {cid}; not served")
            staging.close()
            staging.received = inflater.received
        except BodyTooLarge:
            staging.discard()
            raise too_large from None
        except InflatedTooFar as exc:
            staging.discard()
            raise AtcdnError(502, "InflatedTooFar", f"{source}: {exc}; refused") from None
        except BodyError as exc:
            staging.discard()
            raise AtcdnError(502, "UndecodableBody", f"{source}: {exc}") from None
        except BaseException:
            staging.discard()
            raise
        finally:
            self.metrics.bytes_received.labels(source).inc(inflater.received)
            if allowance is not None and self.shares is not None:  # stored or not
                self.shares.charge(allowance, max(inflater.received, staging.size))
        return staging

    def _reserve(self, more: int) -> None:
        """503 when the node's fetch temp space (all workers' files) plus ``more`` would
        pass ``fetch_temp_size``."""
        used = temp_usage(self.tmp_dir)
        cap = self.limits.temp_bytes
        if used + more > cap:
            raise AtcdnError(503, "TempSpaceFull",
                             f"fetches in progress hold {used} bytes, the cap is {cap}")

    def _hand_to_origin(self, did: str, cid: str, pds: str, staging: Staging) -> None:
        """Give a PDS-fetched blob to the origin in the background (needs a token): it
        lands in the origin's bounded *pulled* tier, charged to ``did`` and ``pds``."""
        if not self.settings.origin_token:
            return
        copy = staging.path.with_suffix(".handoff.part")  # swept like a staging if orphaned
        os.link(staging.path, copy)
        task = asyncio.create_task(self._put(did, cid, pds, copy))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    async def _put(self, did: str, cid: str, pds: str, path: Path) -> None:
        try:
            response = await self.origin.put(
                f"/handoff/{cid}", params={"did": did, "pds": pds}, content=_chunks(path),
                headers={"authorization": f"Bearer {self.settings.origin_token}",
                         "content-type": "application/octet-stream",
                         "content-length": str(path.stat().st_size)})
            if response.status_code not in (200, 201):
                log.warning("origin refused %s: HTTP %s %s", cid, response.status_code,
                            response.text[:200])
        except httpx.HTTPError as exc:
            log.warning("handing %s to the origin failed: %r", cid, exc)
        finally:
            path.unlink(missing_ok=True)


def temp_usage(tmp_dir: Path) -> int:
    """Bytes held by the files in ``tmp_dir`` (fetches and hand-offs in progress)."""
    total = 0
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
    return total


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk
