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
from atcdn.core.limits import FetchLimits

# Ranges refused whole although Python's ``is_global`` may call them global: deprecated
# or translation forms that carry (or reach) an IPv4 address we cannot vouch for.
REFUSED_NETWORKS = tuple(ipaddress.ip_network(net) for net in (
    "::/96",            # IPv4-compatible, deprecated (RFC 4291): ::7f00:1 is 127.0.0.1
    "::ffff:0:0:0/96",  # SIIT IPv4-translated (RFC 2765)
    "64:ff9b:1::/48",   # local-use NAT64 (RFC 8215): the embedding is site-defined
    "fec0::/10",        # site-local, deprecated (RFC 3879)
    "2001::/32",        # Teredo: tunnel endpoints are (obfuscated) IPv4
    "192.0.0.0/24",     # IETF protocol assignments
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix (RFC 6052)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, NAT64 or 6to4 IPv6 address leads to (pure)."""
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour


def is_public_address(ip: str) -> bool:
    """True for a global unicast address (pure): no loopback, private, link-local,
    shared (CGNAT), multicast, reserved or unspecified ranges, also inside IPv6
    (IPv4-mapped, NAT64, 6to4), and none of ``REFUSED_NETWORKS``."""
    address = ipaddress.ip_address(ip)
    if any(address in net for net in REFUSED_NETWORKS if net.version == address.version):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
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
        # Name errors become httpcore's (httpx maps them to ConnectError/ConnectTimeout),
        # as httpcore's own backend does: a DNS failure is an upstream failure, not a bug.
        try:
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
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
                  max_redirects: int = FetchLimits.max_redirects,
                  user_agent: str = "atcdn") -> httpx.AsyncClient:
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
