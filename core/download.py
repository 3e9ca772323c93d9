"""One blob downloaded and verified: the GET that the edge (from the origin or a PDS) and
the origin (from a PDS, core/pull.py) both make.

Every byte is hashed while it streams to a temporary file (a ``Staging``, as the origin
receives uploads); only a staging whose sha256 matches the CID is ever returned, so
nothing unverified can be stored, transformed, cached or served. A mismatch is counted,
logged and answered 502. Bodies are read raw and decoded by ``atcdn.core.bodies``: the
bytes on the wire and the decoded bytes are both held to ``limits.max_bytes`` (and to a
caller's ``Budget``, a quota), and a body that inflates like a bomb is refused. Every
download in progress in ``tmp_dir`` (all worker processes) shares ``limits.temp_bytes``
of temporary space (503 beyond). 5xx and connection errors are retried, never 4xx.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
from atcdn.core.staging import Staging

log = logging.getLogger("atcdn.download")
RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
TEMP_CHECK_EVERY = 256 * 1024  # bytes written between looks at the node's temp usage


class Meter(Protocol):
    """Where a server counts its downloads (its Prometheus metrics); ``source`` names the
    upstream ("origin", "pds")."""

    def fetched(self, source: str, result: str, seconds: float | None) -> None:
        """One download ended: an HTTP status, or blocked, timeout, unreachable, error;
        ``seconds`` for a verified 200."""

    def verification_failed(self, source: str) -> None: ...

    def received(self, source: str, size: int) -> None:
        """Bytes received on the wire (before decoding), kept or not."""


@dataclass
class Budget:
    """A caller's own cap on one download below the size limit (a quota): a body passing
    ``bytes`` (on the wire or decoded) is refused with ``refusal()``. ``received`` is
    filled in with the bytes that came on the wire, kept or not."""

    bytes: int
    refusal: Callable[[], AtcdnError]
    received: int = 0


class Downloads:
    def __init__(self, tmp_dir: Path, limits: FetchLimits, retries: int, meter: Meter) -> None:
        self.tmp_dir = tmp_dir
        self.limits = limits
        self.retries = retries
        self.meter = meter
        tmp_dir.mkdir(parents=True, exist_ok=True)

    async def get(self, client: httpx.AsyncClient, url: str, params: dict[str, str],
                  cid: str, source: str, budget: Budget | None = None, *,
                  retry_connections: bool = True,
                  seen: Callable[[httpx.Response], None] | None = None,
                  ) -> tuple[int, Staging | None]:
        """(status, verified finished staging or None when the status is not 200); the
        caller discards the staging. AtcdnError 502/504 (and 413, 503) for trouble.
        ``retry_connections=False``: a failed connection is not retried (an edge with
        several origins tries the next one instead); ``seen``: called with a 200 response
        before its body is read."""
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(0.1 * 2**attempt)
            try:
                async with asyncio.timeout(self.limits.timeout):
                    async with client.stream("GET", url, params=params) as response:
                        if (response.status_code >= 500 and response.status_code != 504
                                and attempt < self.retries):  # a 504 already waited its
                            continue  # deadline upstream: asking again doubles the wait
                        if response.status_code != 200:
                            self.meter.fetched(source, str(response.status_code), None)
                            return response.status_code, None
                        if seen is not None:  # the caller reads a header of the answer
                            seen(response)
                        fetched = await self._save(response, cid, source, budget)
            except BlockedAddress as exc:
                self.meter.fetched(source, "blocked", None)
                raise AtcdnError(502, "ForbiddenAddress", str(exc)) from None
            except (httpx.TimeoutException, TimeoutError):
                self.meter.fetched(source, "timeout", None)
                raise AtcdnError(504, "UpstreamTimeout", f"{source} timed out") from None
            except RETRYABLE as exc:
                if attempt < self.retries and retry_connections:
                    continue
                self.meter.fetched(source, "unreachable", None)
                raise AtcdnError(502, "UpstreamUnavailable", f"{source}: {exc!r}") from None
            except httpx.HTTPError as exc:
                self.meter.fetched(source, "error", None)
                raise AtcdnError(502, "UpstreamFailed", f"{source}: {exc!r}") from None
            self.meter.fetched(source, "200", time.monotonic() - started)
            return 200, fetched
        raise AssertionError("unreachable")

    async def _save(self, response: httpx.Response, cid: str, source: str,
                    budget: Budget | None) -> Staging:
        """Stream into a staging while hashing; keep it only if it is ``cid``."""
        limit = self.limits.max_bytes
        cap = min(limit, budget.bytes) if budget is not None else limit
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise AtcdnError(413, "BlobTooLarge", f"blob is {declared} bytes, limit {limit}")
        if declared and declared.isdigit() and int(declared) > cap:
            raise budget.refusal()  # type: ignore[union-attr]
        expected = int(declared) if declared and declared.isdigit() else 0
        self._reserve(expected)
        try:
            inflater = Inflater(response.headers.get("content-encoding"), cap)
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
                self.meter.verification_failed(source)
                log.warning("verification failed: %s sent %s for %s", source,
                            staging.verifier.cid, cid)
                raise AtcdnError(502, "VerificationFailed",
                                 f"{source} bytes do not match {cid}; not served")
            staging.close()
            staging.received = inflater.received
        except BodyTooLarge:
            staging.discard()
            if cap < limit:
                raise budget.refusal() from None  # type: ignore[union-attr]
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
            self.meter.received(source, inflater.received)
            if budget is not None:
                budget.received += inflater.received
        return staging

    def _reserve(self, more: int) -> None:
        """503 when the temp space of every download in ``tmp_dir`` (all workers' files)
        plus ``more`` would pass ``limits.temp_bytes``."""
        used = temp_usage(self.tmp_dir)
        cap = self.limits.temp_bytes
        if used + more > cap:
            raise AtcdnError(503, "TempSpaceFull",
                             f"fetches in progress hold {used} bytes, the cap is {cap}")


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
