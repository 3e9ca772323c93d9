"""Fetching through DID documents: PDS fallback with stand-in PLC and PDS processes,
handing blobs on to the origin, and the SSRF guard."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.core.errors import AtcdnError, BlockedAddress
from atcdn.core.resolver import Resolver
from atcdn.core.ssrf import public_client

from tests.helpers.nodes import start_upstream

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def world(tmp_path: Path):
    """An empty origin (404 for every GET), and a PLC directory + PDS holding the blob."""
    origin = start_upstream(tmp_path / "origin")
    (origin.root / "origin-empty").touch()
    pds = start_upstream(tmp_path / "pds")
    pds.add_did(DID, pds.url)
    try:
        yield origin, pds
    finally:
        origin.proc.stop()
        pds.proc.stop()


def test_pds_fallback_serves_and_hands_on_to_origin(world, edge_factory) -> None:
    origin, pds = world
    data = b"GIF89a" + bytes(range(256)) * 20
    cid = pds.add_blob(data)
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
    assert r.status_code == 200 and r.content == data
    log = pds.requests()
    assert f"GET /{DID}?" in log
    assert any(line.startswith("GET /xrpc/com.atproto.sync.getBlob") and cid in line
               for line in log)
    # The verified bytes were handed to the origin, with the token.
    assert wait_for(lambda: (origin.root / "blobs" / cid).is_file())
    assert (origin.root / "blobs" / cid).read_bytes() == data
    # Unknown to the PDS (it answers 400): 404.
    missing = compute(b"not on the pds")
    r = httpx.get(f"{edge.url}/blob/{DID}/{missing}", timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "BlobNotFound"
    # A DID the PLC directory does not know: 404.
    r = httpx.get(f"{edge.url}/blob/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/{missing}", timeout=30)
    assert r.status_code == 404
    assert edge.metric("atcdn_edge_pds_fetches_total") == 2


def test_pds_fallback_can_be_turned_off(world, edge_factory) -> None:
    origin, pds = world
    cid = pds.add_blob(b"some bytes on the pds only")
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url, "ATCDN_PDS_FALLBACK": "0"})
    assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 404
    assert pds.requests() == []


def test_corrupt_pds_is_never_served(tmp_path: Path, edge_factory) -> None:
    origin = start_upstream(tmp_path / "origin")
    (origin.root / "origin-empty").touch()
    pds = start_upstream(tmp_path / "pds", env={"STANDIN_FLIP": "1"})
    try:
        pds.add_did(DID, pds.url)
        cid = pds.add_blob(b"bytes the pds will corrupt" * 50)
        edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
        r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
        assert r.status_code == 502 and r.json()["error"] == "VerificationFailed"
        assert not (origin.root / "blobs" / cid).exists()  # nothing handed on
    finally:
        origin.proc.stop()
        pds.proc.stop()


def test_ssrf_guard_refuses_loopback_did_web(world, edge_factory) -> None:
    origin, pds = world
    port = pds.url.rsplit(":", 1)[1]
    did = f"did:web:localhost%3A{port}"
    pds.add_did(did, pds.url, name="did-web")
    cid = pds.add_blob(b"bytes behind a private address")
    # Allowed (as in tests and local use): resolved and served.
    open_edge = edge_factory(origin.url)
    assert httpx.get(f"{open_edge.url}/blob/{did}/{cid}", timeout=30).status_code == 200
    seen = len(pds.requests())
    # The production default: refused before any connection to the private address.
    guarded = edge_factory(origin.url, env={"ATCDN_ALLOW_PRIVATE_NETWORKS": "0",
                                            "ATCDN_PLC_URL": pds.url})
    for path in (f"/blob/{did}/{cid}", f"/blob/{DID}/{cid}"):  # did:web, then did:plc via http
        r = httpx.get(guarded.url + path, timeout=30)
        assert r.status_code == 502 and r.json()["error"] == "ForbiddenAddress", r.text
    assert len(pds.requests()) == seen


@contextmanager
def connection_counter() -> Iterator[tuple[int, list[str]]]:
    """A bare TCP port on 127.0.0.1 that accepts, records and closes every connection:
    the stand-in for a host behind a private address."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    seen: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            seen.append(peer[0])
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        stop.set()
        thread.join()
        listener.close()


def guarded_get(url: str) -> None:
    async def get() -> None:
        client = public_client(allow_private_networks=False, timeout=httpx.Timeout(3.0))
        try:
            await client.get(url)
        finally:
            await client.aclose()

    asyncio.run(get())


def resolve_error(plc_url: str, *, allow_private_networks: bool = False) -> AtcdnError:
    """The AtcdnError of resolving DID through ``plc_url`` (fails the test if none)."""
    async def resolve() -> None:
        client = public_client(allow_private_networks=allow_private_networks,
                               timeout=httpx.Timeout(5.0))
        try:
            await Resolver(client, plc_url).pds(DID)
        finally:
            await client.aclose()

    with pytest.raises(AtcdnError) as caught:
        asyncio.run(resolve())
    return caught.value


def test_guarded_client_checks_the_resolved_address() -> None:
    """https to a name that resolves to loopback is refused before connecting."""
    with connection_counter() as (port, seen):
        error = resolve_error(f"https://localhost:{port}")
        assert (error.status, error.error) == (502, "ForbiddenAddress")
        assert "non-public address" in error.message
        # An unguarded client would have connected (and failed the TLS handshake).
        with pytest.raises(BlockedAddress):
            guarded_get(f"https://127.0.0.1:{port}/")
        assert seen == []


def test_guarded_client_refuses_plain_http() -> None:
    """http is refused before any connection, even to a public address."""
    with pytest.raises(BlockedAddress, match="refusing http URL"):
        guarded_get("http://1.1.1.1/xrpc/com.atproto.sync.getBlob")


def test_pds_blob_lands_in_the_real_origin(origin: str, tmp_path: Path, edge_factory) -> None:
    pds = start_upstream(tmp_path / "pds")
    try:
        pds.add_did(DID, pds.url)
        data = b"\x89PNG\r\n\x1a\n" + b"not really a png, still a blob" * 40
        cid = pds.add_blob(data)
        edge = edge_factory(origin, env={"ATCDN_PLC_URL": pds.url})
        assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).content == data
        assert wait_for(lambda: httpx.get(f"{origin}/blob/{cid}").status_code == 200)
        assert httpx.get(f"{origin}/blob/{cid}").content == data
    finally:
        pds.proc.stop()


def test_dns_failure_is_an_upstream_failure_not_a_crash() -> None:
    """No DNS for the PLC host (a machine without DNS, or a dead name) under the SSRF
    guard: 502, never a raw socket.gaierror (which the edge answered 500)."""
    error = resolve_error("https://plc.invalid")
    assert error.status == 502 and "plc.invalid" in error.message


def test_guarded_client_raises_httpx_errors_for_dns_failures() -> None:
    with pytest.raises(httpx.ConnectError):
        guarded_get("https://pds.invalid/xrpc/com.atproto.sync.getBlob")


def test_tls_failure_is_502(tmp_path: Path) -> None:
    """https to a server that speaks plain HTTP: a TLS failure, answered 502."""
    from tests.helpers.servers import static_server

    with static_server(tmp_path) as url:
        error = resolve_error(url.replace("http://", "https://"), allow_private_networks=True)
    assert error.status == 502
