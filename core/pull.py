"""Pulling a blob from its author's PDS: the edge's fallback and the origin's shield.

The DID is resolved to its PDS (core/resolver.py), and the PDS's getBlob is downloaded
and verified (core/download.py). Everything reached through a DID document goes
through the SSRF guard (core/ssrf.py) unless private networks are allowed. A PDS's
failures are remembered (core/refusals.py): a (PDS, CID) that lied, inflated or was
too big is answered from memory for a while, and a PDS that keeps failing is backed off.
A PDS answers unknown and taken-down blobs with 400, like the AppView: 404 here.
"""

from __future__ import annotations

import httpx
from atcdn.core.download import Budget, Downloads
from atcdn.core.errors import AtcdnError
from atcdn.core.refusals import Refusals
from atcdn.core.resolver import Resolver
from atcdn.core.ssrf import public_client
from atcdn.core.staging import Staging

GET_BLOB = "/xrpc/com.atproto.sync.getBlob"


class PdsPull:
    def __init__(self, downloads: Downloads, *, plc_url: str, allow_private_networks: bool,
                 user_agent: str) -> None:
        limits = downloads.limits
        self.downloads = downloads
        self.client = public_client(
            allow_private_networks=allow_private_networks,
            timeout=httpx.Timeout(limits.timeout, connect=limits.connect_timeout),
            max_redirects=limits.max_redirects, user_agent=user_agent)
        self.resolver = Resolver(self.client, plc_url, deadline=limits.resolve_timeout,
                                 max_document=limits.did_document_bytes)
        self.refusals = Refusals()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def pds(self, did: str) -> str:
        """The PDS URL of ``did`` (404 when it names none, 502/504 resolution trouble)."""
        return await self.resolver.pds(did)

    async def pull(self, did: str, cid: str, pds: str | None = None,
                   budget: Budget | None = None) -> tuple[str, Staging]:
        """(the PDS, the verified bytes of ``cid`` from it in a finished staging, which the
        caller discards). ``pds``: already resolved; ``budget``: a quota."""
        pds = pds or await self.pds(did)
        self.refusals.check(pds, cid)
        try:
            status, fetched = await self.downloads.get(
                self.client, pds + GET_BLOB, {"did": did, "cid": cid}, cid, "pds", budget)
        except AtcdnError as exc:
            self.refusals.failed(pds, cid, exc)
            raise
        if fetched is None:
            if 400 <= status < 500:
                raise AtcdnError(404, "BlobNotFound", f"no blob {cid} for {did}")
            raise AtcdnError(502, "UpstreamFailed", f"PDS answered HTTP {status}")
        return pds, fetched
