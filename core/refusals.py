"""Recent failures of strangers' PDSes, remembered so an attack costs us once, not per request.

A PDS that sent bytes not matching the CID, a body over the size limit or a
decompression bomb has its (PDS, CID) answered with the same error for ``remember``
seconds, without fetching again. After ``strikes`` such failures (each within
``remember`` of the last) the whole PDS is backed off: every fetch from it is answered
503 for ``backoff`` seconds. Both tables are bounded (``max_entries``, oldest out), per
worker process. Pure: no I/O; the clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from atcdn.core.errors import AtcdnError
from cachetools import TTLCache

# The failures that are the PDS's fault and would cost the same again (not timeouts,
# not our own temp space running out, not a 4xx "no such blob").
REMEMBERED = frozenset({"VerificationFailed", "BlobTooLarge", "InflatedTooFar",
                        "UndecodableBody"})


class Refusals:
    def __init__(self, *, remember: float = 60.0, strikes: int = 3, backoff: float = 60.0,
                 max_entries: int = 10_000,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.strikes = strikes
        self._failed: TTLCache[tuple[str, str], AtcdnError] = TTLCache(
            max_entries, remember, timer=timer)
        self._strikes: TTLCache[str, int] = TTLCache(max_entries, remember, timer=timer)
        self._backoff: TTLCache[str, bool] = TTLCache(max_entries, backoff, timer=timer)

    def check(self, pds: str, cid: str) -> None:
        """Raise the remembered error of (pds, cid), or 503 while ``pds`` is backed off."""
        if pds in self._backoff:
            raise AtcdnError(503, "UpstreamBackoff",
                            f"{pds} failed repeatedly; not asked again for a while")
        failed = self._failed.get((pds, cid))
        if failed is not None:
            raise AtcdnError(failed.status, failed.error, f"{failed.message} (remembered)")

    def failed(self, pds: str, cid: str, error: AtcdnError) -> None:
        """Record a failed fetch; only the PDS's own faults (``REMEMBERED``) count."""
        if error.error not in REMEMBERED:
            return
        self._failed[(pds, cid)] = error
        strikes = self._strikes.get(pds, 0) + 1
        self._strikes[pds] = strikes
        if strikes >= self.strikes:
            self._backoff[pds] = True
            self._strikes.pop(pds, None)
