"""DID resolution: which PDS holds an account's blobs.

did:plc -> ``GET {plc}/{did}``; did:web -> ``https://{host}/.well-known/did.json``. The
PDS is the service ``#atproto_pds`` of type ``AtprotoPersonalDataServer``. Documents are
cached like the reference resolver does: fresh for 1 h, then refreshed, and a stale one
still used (up to 24 h) when a refresh fails.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from atcdn.core.did import web_host
from atcdn.core.errors import BlockedAddress, EdgeError

STALE_AFTER = 3600.0
EXPIRE_AFTER = 24 * 3600.0


def document_url(did: str, plc_url: str) -> str:
    if did.startswith("did:plc:"):
        return f"{plc_url.rstrip('/')}/{did}"
    host = web_host(did)
    # As the reference resolver does: plain http for localhost (development only;
    # the SSRF guard refuses loopback unless private networks are allowed).
    scheme = "http" if host.split(":")[0] == "localhost" else "https"
    return f"{scheme}://{host}/.well-known/did.json"


def pds_endpoint(doc: Any, did: str) -> str | None:
    """The PDS base URL in a DID document, or None (pure)."""
    if not isinstance(doc, dict) or doc.get("id") != did:
        return None
    for service in doc.get("service") or ():
        if not isinstance(service, dict):
            continue
        if (service.get("id") in ("#atproto_pds", f"{did}#atproto_pds")
                and service.get("type") == "AtprotoPersonalDataServer"
                and isinstance(service.get("serviceEndpoint"), str)):
            return service["serviceEndpoint"].rstrip("/")
    return None


class Resolver:
    """Resolves DIDs to PDS URLs through ``client`` (which carries the SSRF guard)."""

    def __init__(self, client: httpx.AsyncClient, plc_url: str) -> None:
        self.client = client
        self.plc_url = plc_url
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def pds(self, did: str) -> str:
        """The PDS URL of ``did``; EdgeError 404 when the DID or its PDS is unknown."""
        now = time.monotonic()
        cached = self._cache.get(did)
        if cached and now - cached[0] < STALE_AFTER:
            endpoint = cached[1]
        else:
            try:
                endpoint = await self._fetch(did)
            except EdgeError as exc:
                if exc.status >= 500 and cached and now - cached[0] < EXPIRE_AFTER:
                    endpoint = cached[1]
                else:
                    raise
            else:
                self._cache[did] = (now, endpoint)
        if endpoint is None:
            raise EdgeError(404, "BlobNotFound", f"{did} names no PDS")
        return endpoint

    def forget(self, did: str) -> None:
        """Drop the cached document of ``did`` (its identity changed: firehose #identity)."""
        self._cache.pop(did, None)

    async def _fetch(self, did: str) -> str | None:
        url = document_url(did, self.plc_url)
        try:
            response = await self.client.get(url)
        except BlockedAddress as exc:
            raise EdgeError(502, "ForbiddenAddress", str(exc)) from None
        except httpx.TimeoutException:
            raise EdgeError(504, "UpstreamTimeout", f"resolving {did} timed out") from None
        except httpx.HTTPError as exc:
            raise EdgeError(502, "UpstreamFailed", f"resolving {did}: {exc}") from None
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise EdgeError(502, "UpstreamFailed",
                            f"resolving {did}: HTTP {response.status_code}")
        try:
            return pds_endpoint(response.json(), did)
        except ValueError:
            raise EdgeError(502, "UpstreamFailed", f"{did}: DID document is not JSON") from None
