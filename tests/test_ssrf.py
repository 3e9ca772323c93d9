"""The SSRF guard's address check (core/ssrf.py), table-driven: every way an IPv6
address can carry or reach a non-public IPv4 one is refused (issue 9, hole 7)."""

from __future__ import annotations

import pytest
from atcdn.core.ssrf import is_public_address

PUBLIC = [
    "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",            # IPv4-mapped public: connects to 8.8.8.8
    "64:ff9b::808:808",          # NAT64 of 8.8.8.8
    "2002:808:808::1",           # 6to4 of 8.8.8.8
]
REFUSED = [
    # IPv4 private, loopback, link-local (cloud metadata), CGNAT, unspecified, multicast...
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.0.8", "198.18.0.1", "240.0.0.1",
    # IPv6 loopback, unspecified, ULA, link-local, multicast, documentation, discard.
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "2001:db8::1", "100::1",
    # Site-local (deprecated, RFC 3879): routed inside sites.
    "fec0::1", "feff::1",
    # IPv4-mapped non-public.
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    # NAT64 (RFC 6052) of non-public IPv4, and the local-use NAT64 prefix (RFC 8215).
    "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::c0a8:101",
    "64:ff9b:1::7f00:1", "64:ff9b:1::808:808",
    # IPv4-compatible (deprecated, RFC 4291) and SIIT IPv4-translated (RFC 2765).
    "::7f00:1", "::a9fe:a9fe", "::808:808", "::ffff:0:7f00:1", "::ffff:0:808:808",
    # 6to4 of non-public IPv4.
    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:a00:1::1", "2002:c0a8:101::",
    # Teredo: a tunnel whose endpoints are IPv4 we cannot check well; refused as a whole.
    "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::1",
]


@pytest.mark.parametrize("ip", PUBLIC)
def test_public(ip: str) -> None:
    assert is_public_address(ip) is True


@pytest.mark.parametrize("ip", REFUSED)
def test_refused(ip: str) -> None:
    assert is_public_address(ip) is False
