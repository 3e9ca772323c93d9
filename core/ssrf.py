"""The SSRF guard: fetches reached through a DID document (PLC directory, did:web hosts,
PDSes) are the open internet. Unless private networks are allowed, they are https only and
connect only to public unicast addresses, checked on the address actually connected to
(after DNS), on every redirect hop.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import anyio
import httpcore
import httpx
from atcdn.core.bodies import IDENTITY
from atcdn.core.errors import BlockedAddress


def is_public_address(ip: str) -> bool:
    """True for a global unicast address (pure): no loopback, private, link-local,
    shared (CGNAT), multicast, reserved or unspecified ranges, also inside IPv6."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (
            address.teredo[1] if address.teredo else None)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    return address.is_global and not address.is_multicast


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """Resolve the host, refuse unless every address is public, connect by address.

    Connecting to the checked address (TLS still verifies the original name: httpcore
    passes it as server_hostname) leaves no gap for DNS rebinding.
    """

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        with anyio.fail_after(timeout):
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        refused = [a for a in addresses if not is_public_address(a)]
        if not addresses or refused:
            raise BlockedAddress(f"{host} resolves to a non-public address {refused}")
        return await self._inner.connect_tcp(addresses[0], port, timeout, local_address,
                                             socket_options)

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        raise BlockedAddress("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _https_only(request: httpx.Request) -> None:
    if request.url.scheme != "https":
        raise BlockedAddress(f"refusing {request.url.scheme} URL {request.url}")


def public_client(*, allow_private_networks: bool, timeout: httpx.Timeout,
                  max_redirects: int = 3, user_agent: str = "atcdn") -> httpx.AsyncClient:
    """The client for the open internet (DID documents, PDSes), with the SSRF guard
    unless ``allow_private_networks`` (local use and tests). It asks for identity
    encoding; read bodies with ``atcdn.core.bodies`` (``client.stream``), which bounds
    what a host that compresses anyway can inflate to."""
    kwargs: dict[str, Any] = {}
    if not allow_private_networks:
        transport = httpx.AsyncHTTPTransport()
        # httpx exposes no network-backend option; httpcore's pool takes one.
        transport._pool._network_backend = PublicOnlyBackend()
        kwargs = {"transport": transport, "event_hooks": {"request": [_https_only]}}
    return httpx.AsyncClient(timeout=timeout, trust_env=False,
                             follow_redirects=True, max_redirects=max_redirects,
                             headers={"user-agent": user_agent, **IDENTITY}, **kwargs)
