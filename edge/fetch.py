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
from pathlib import Path

import httpx
from atcdn.core.bodies import (
    BodyError,
    BodyTooLarge,
    InflatedTooFar,
    Inflater,
    iter_body,
)
from atcdn.core.errors import AtcdnError, BlockedAddress
from atcdn.core.limits import FetchLimits
from atcdn.core.resolver import Resolver
from atcdn.core.settings import EdgeSettings
from atcdn.core.ssrf import public_client
from atcdn.core.staging import Staging, sweep
from atcdn.edge.metrics import Metrics
from atcdn.edge.origins import Origin, Origins
from atcdn.edge.refusals import Refusals

log = logging.getLogger("atcdn.edge")
RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
# Errors of a connection to an origin that failed: the fetch moves to the next origin.
UNREACHABLE = frozenset({"UpstreamUnavailable", "UpstreamTimeout"})
TEMP_CHECK_EVERY = 256 * 1024  # bytes written between looks at the node's temp usage


def _timeout(limits: FetchLimits) -> httpx.Timeout:
    return httpx.Timeout(limits.timeout, connect=limits.connect_timeout)


class Fetcher:
    def __init__(self, settings: EdgeSettings, metrics: Metrics, tmp_dir: Path) -> None:
        self.settings = settings
        self.limits = FetchLimits.from_settings(settings)
        self.metrics = metrics
        self.tmp_dir = tmp_dir
        tmp_dir.mkdir(parents=True, exist_ok=True)
        sweep(tmp_dir, min_age=3600.0)  # a hand-off may outlive its staging's lock
        self.origins = Origins(settings, metrics)
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
        await self.origins.aclose()
        await self.public.aclose()

    async def fetch(self, did: str, cid: str) -> Staging:
        """The verified bytes of ``cid`` in a finished staging (the caller discards it):
        the origin's copy, else the PDS's (handed on to the origin so the next edge finds
        it). 404 unknown, 451 taken down at the origin (never looked for elsewhere),
        502/504 upstream trouble."""
        status, fetched = await self._from_origins(did, cid)
        if fetched is not None:
            return fetched
        if status == 451:
            raise AtcdnError(451, "TakenDown", f"{cid} is taken down")
        if status != 404:
            raise AtcdnError(502, "UpstreamFailed", f"origin answered HTTP {status}")
        if not self.settings.pds_fallback:
            raise AtcdnError(404, "BlobNotFound", f"no blob {cid}")
        pds = await self.resolver.pds(did)
        self.refusals.check(pds, cid)
        try:
            status, fetched = await self._get(
                self.public, f"{pds}/xrpc/com.atproto.sync.getBlob", {"did": did, "cid": cid},
                cid, "pds")
        except AtcdnError as exc:
            self.refusals.failed(pds, cid, exc)
            raise
        if fetched is None:
            # A PDS answers unknown (and taken-down) blobs with 400, like the AppView: 404.
            if 400 <= status < 500:
                raise AtcdnError(404, "BlobNotFound", f"no blob {cid} for {did}")
            raise AtcdnError(502, "UpstreamFailed", f"PDS answered HTTP {status}")
        self._hand_to_origin(did, cid, pds, fetched)
        return fetched

    async def _from_origins(self, did: str, cid: str) -> tuple[int, Staging | None]:
        """Ask the CID's home origin (the next one while it is down). A fetch whose
        connection fails (refused, reset, timed out) is tried once on the next origin, at
        once: nothing was sent to the client yet, and a GET is safe to repeat. A 5xx is
        an answer, retried on the same origin as with one."""
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
                          failover: bool = False) -> tuple[int, Staging | None]:
        """``_get`` from one origin, counted per origin; ``failover``: a failed connection
        is not retried here (the caller moves to the next origin)."""
        results = self.metrics.origin_requests.labels
        try:
            status, fetched = await self._get(origin.client, f"/blob/{cid}", {"did": did}, cid,
                                              "origin", retry_connections=not failover)
        except AtcdnError as exc:
            results(origin.url, exc.error).inc()
            raise
        results(origin.url, str(status)).inc()
        if status < 500:
            self.origins.passed(origin)
        return status, fetched

    async def _get(self, client: httpx.AsyncClient, url: str, params: dict[str, str],
                   cid: str, source: str, *, retry_connections: bool = True
                   ) -> tuple[int, Staging | None]:
        """(status, verified file or None); retries 5xx and (unless told not to) connection
        errors, never 4xx."""
        counter = self.metrics.origin_fetches if source == "origin" else self.metrics.pds_fetches
        retries = self.settings.fetch_retries
        started = time.monotonic()
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(0.1 * 2**attempt)
            try:
                async with asyncio.timeout(self.limits.timeout):
                    async with client.stream("GET", url, params=params) as response:
                        if response.status_code >= 500 and attempt < retries:
                            continue
                        if response.status_code != 200:
                            counter.labels(str(response.status_code)).inc()
                            return response.status_code, None
                        fetched = await self._save(response, cid, source)
            except BlockedAddress as exc:
                counter.labels("blocked").inc()
                raise AtcdnError(502, "ForbiddenAddress", str(exc)) from None
            except (httpx.TimeoutException, TimeoutError):
                counter.labels("timeout").inc()
                raise AtcdnError(504, "UpstreamTimeout", f"{source} timed out") from None
            except RETRYABLE as exc:
                if attempt < retries and retry_connections:
                    continue
                counter.labels("unreachable").inc()
                raise AtcdnError(502, "UpstreamUnavailable", f"{source}: {exc!r}") from None
            except httpx.HTTPError as exc:
                counter.labels("error").inc()
                raise AtcdnError(502, "UpstreamFailed", f"{source}: {exc!r}") from None
            counter.labels("200").inc()
            self.metrics.fetch_seconds.labels(source).observe(time.monotonic() - started)
            return 200, fetched
        raise AssertionError("unreachable")

    async def _save(self, response: httpx.Response, cid: str, source: str) -> Staging:
        """Stream into a staging while hashing; keep it only if it is ``cid``."""
        limit = self.limits.max_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise AtcdnError(413, "BlobTooLarge", f"blob is {declared} bytes, limit {limit}")
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
            raise AtcdnError(413, "BlobTooLarge", f"blob exceeds {limit} bytes") from None
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
