"""Getting a blob's bytes: from the origin, else from the account's PDS; always verified.

The origin is the operator's own service; the PDS is a stranger's, reached through its
DID document and the SSRF guard (core/pull.py, shared with the origin's shield). Both
downloads stream into a staging while they are hashed, under the same bounds
(core/download.py): only bytes matching the CID are returned. A blob pulled from a PDS
is handed on to the origin in the background, so the next edge finds it there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from atcdn.core.accesslog import current_id
from atcdn.core.download import Downloads
from atcdn.core.errors import AtcdnError
from atcdn.core.limits import FetchLimits
from atcdn.core.pull import PdsPull
from atcdn.core.settings import EdgeSettings
from atcdn.core.staging import Staging, sweep
from atcdn.edge.metrics import Metrics

log = logging.getLogger("atcdn.edge")


def origin_client(settings: EdgeSettings) -> httpx.AsyncClient:
    limits = FetchLimits.from_settings(settings)
    return httpx.AsyncClient(base_url=settings.origin.rstrip("/"),
                             timeout=httpx.Timeout(limits.timeout, connect=limits.connect_timeout),
                             trust_env=False, limits=httpx.Limits(max_connections=64),
                             event_hooks={"request": [_pass_request_id]})


async def _pass_request_id(request: httpx.Request) -> None:
    """The origin logs our request's ID, so one ID follows a miss through both logs."""
    rid = current_id()
    if rid is not None:
        request.headers["x-request-id"] = rid


class Fetcher:
    def __init__(self, settings: EdgeSettings, metrics: Metrics, tmp_dir: Path) -> None:
        self.settings = settings
        self.metrics = metrics
        tmp_dir.mkdir(parents=True, exist_ok=True)
        sweep(tmp_dir, min_age=3600.0)  # a hand-off may outlive its staging's lock
        self.downloads = Downloads(tmp_dir, FetchLimits.from_settings(settings),
                                   settings.fetch_retries, metrics)
        self.origin = origin_client(settings)
        self.pull = PdsPull(self.downloads, plc_url=settings.plc_url,
                            allow_private_networks=settings.allow_private_networks,
                            user_agent="atcdn-edge")
        self._handoffs: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        await self.origin.aclose()
        await self.pull.aclose()

    async def fetch(self, did: str, cid: str) -> Staging:
        """The verified bytes of ``cid`` in a finished staging (the caller discards it):
        the origin's copy, else the PDS's (handed on to the origin so the next edge finds
        it). 404 unknown, 451 taken down at the origin (never looked for elsewhere),
        502/504 upstream trouble."""
        status, fetched = await self.downloads.get(self.origin, f"/blob/{cid}", {"did": did},
                                                   cid, "origin")
        if fetched is not None:
            return fetched
        if status == 451:
            raise AtcdnError(451, "TakenDown", f"{cid} is taken down")
        if status != 404:
            raise AtcdnError(502, "UpstreamFailed", f"origin answered HTTP {status}")
        if not self.settings.pds_fallback:
            raise AtcdnError(404, "BlobNotFound", f"no blob {cid}")
        pds, fetched = await self.pull.pull(did, cid)
        self._hand_to_origin(did, cid, pds, fetched)
        return fetched

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


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk
