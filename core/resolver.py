"""DID resolution: which PDS holds an account's blobs.

did:plc -> ``GET {plc}/{did}``; did:web -> ``https://{host}/.well-known/did.json``. The
PDS is the service ``#atproto_pds`` of type ``AtprotoPersonalDataServer``. Documents are
cached like the reference resolver does: fresh for 1 h, then refreshed, and a stale one
still used (up to 24 h) when a refresh fails.

The hosts are strangers, so everything is bounded: a document is at most
``max_document`` bytes on the wire and decoded (real ones are under 2 KB), one deadline
covers a whole resolution (connect, redirects, a dripping body), and the cache holds at most ``max_entries`` DIDs
(least recently used out first).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from atcdn.core.bodies import BodyError, BodyTooLarge, read_body
from atcdn.core.did import web_host
from atcdn.core.errors import AtcdnError, BlockedAddress
from atcdn.core.limits import FetchLimits
from cachetools import LRUCache

STALE_AFTER = 3600.0
EXPIRE_AFTER = 24 * 3600.0
MAX_ENTRIES = 100_000  # cached DIDs per process: ~20 MB at most


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

    def __init__(self, client: httpx.AsyncClient, plc_url: str, *,
                 deadline: float = FetchLimits.resolve_timeout,
                 max_document: int = FetchLimits.did_document_bytes,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.client = client
        self.plc_url = plc_url
        self.deadline = deadline
        self.max_document = max_document
        self._cache: LRUCache[str, tuple[float, str | None]] = LRUCache(max_entries)

    async def pds(self, did: str) -> str:
        """The PDS URL of ``did``; AtcdnError 404 when the DID or its PDS is unknown."""
        now = time.monotonic()
        cached = self._cache.get(did)
        if cached and now - cached[0] < STALE_AFTER:
            endpoint = cached[1]
        else:
            try:
                endpoint = await self._fetch(did)
            except AtcdnError as exc:
                if exc.status >= 500 and cached and now - cached[0] < EXPIRE_AFTER:
                    endpoint = cached[1]
                else:
                    raise
            else:
                self._cache[did] = (now, endpoint)
        if endpoint is None:
            raise AtcdnError(404, "BlobNotFound", f"{did} names no PDS")
        return endpoint

    def forget(self, did: str) -> None:
        """Drop the cached document of ``did`` (its identity changed: firehose #identity)."""
        self._cache.pop(did, None)

    async def _fetch(self, did: str) -> str | None:
        url = document_url(did, self.plc_url)
        try:
            async with asyncio.timeout(self.deadline):
                async with self.client.stream("GET", url) as response:
                    if response.status_code in (404, 410):
                        return None
                    if response.status_code != 200:
                        raise AtcdnError(502, "UpstreamFailed",
                                        f"resolving {did}: HTTP {response.status_code}")
                    body = await read_body(response, self.max_document)
        except BlockedAddress as exc:
            raise AtcdnError(502, "ForbiddenAddress", str(exc)) from None
        except (httpx.TimeoutException, TimeoutError):
            raise AtcdnError(504, "UpstreamTimeout", f"resolving {did} timed out") from None
        except (httpx.HTTPError, OSError) as exc:  # OSError: DNS, TLS, sockets
            raise AtcdnError(502, "UpstreamFailed", f"resolving {did}: {exc}") from None
        except BodyTooLarge:
            raise AtcdnError(502, "DidDocumentTooLarge",
                            f"{did}: DID document over {self.max_document} bytes") from None
        except BodyError as exc:
            raise AtcdnError(502, "UpstreamFailed", f"{did}: DID document: {exc}") from None
        try:
            return pds_endpoint(json.loads(body), did)
        except ValueError:
            raise AtcdnError(502, "UpstreamFailed", f"{did}: DID document is not JSON") from None
