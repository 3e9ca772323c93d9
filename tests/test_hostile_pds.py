"""A PDS or DID host run by an attacker (issue 9, holes 1, 3 and 5).

Any DID can name any PDS, so these stand-ins (tests/helpers/standins.py, real HTTP
processes) play what the public internet offers: a PDS that gzips a decompression bomb
whatever it was asked for, one that corrupts every blob, one that stalls mid-body, and a
DID host that serves oversized, gzipped or dripped documents. A real edge process is
pointed at them.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.core.errors import AtcdnError
from atcdn.core.resolver import Resolver
from atcdn.core.ssrf import public_client

from tests.helpers.nodes import Upstream, start_upstream

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
BOMB = 16 * 1024 * 1024  # zeros; ~16 KB gzipped


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gets(up: Upstream, path: str) -> int:
    return sum(1 for line in up.requests() if line.startswith(f"GET {path}"))


@pytest.fixture
def origin(tmp_path: Path):
    """A stand-in origin that has nothing (every GET 404) and records hand-offs."""
    up = start_upstream(tmp_path / "origin")
    (up.root / "origin-empty").touch()
    try:
        yield up
    finally:
        up.proc.stop()


# -- hole 1: compressed bodies ----------------------------------------------------------

def test_pds_and_did_host_are_asked_for_identity_encoding(origin, hostile, edge_factory) -> None:
    pds = hostile()
    cid = pds.add_blob(os.urandom(5000))
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
    headers = [json.loads(line) for line in (pds.root / "headers.log").read_text().splitlines()]
    assert len(headers) == 2  # the DID document, then the blob
    assert all(h.get("accept-encoding") == "identity" for h in headers), headers


def test_gzip_bomb_is_refused_and_stores_nothing(origin, hostile, edge_factory, tmp_path) -> None:
    """The attack: three HEADs of a 16 MB blob of zeros sent as 16 KB of gzip."""
    pds = hostile(STANDIN_BOMB=str(BOMB))
    cid = compute(bytes(BOMB))
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    before = tree_size(edge.cache_dir)
    for _ in range(3):
        r = httpx.head(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
        assert r.status_code == 502, r.headers
    r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
    assert r.status_code == 502 and r.json()["error"] == "InflatedTooFar", r.text
    assert tree_size(edge.cache_dir) - before < 2 * 1024 * 1024
    time.sleep(0.5)  # a hand-off would have started by now
    assert not (origin.root / "blobs" / cid).exists()
    assert not any(line.startswith("PUT") for line in origin.requests())


def test_gzipped_media_is_still_served(origin, hostile, edge_factory) -> None:
    """A PDS that compresses anyway (ignoring identity) is served when the ratio is a
    media file's, not a bomb's: bytes verified after decoding."""
    pds = hostile(STANDIN_GZIP="1")
    data = os.urandom(200_000) + bytes(100_000)  # compresses ~1.5:1
    cid = pds.add_blob(data)
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
    assert r.status_code == 200 and r.content == data


# -- hole 3: DID documents --------------------------------------------------------------

def resolve(plc_url: str, **kwargs) -> str:
    async def run() -> str:
        client = public_client(allow_private_networks=True,
                               timeout=httpx.Timeout(1.0, connect=1.0))
        try:
            return await Resolver(client, plc_url, **kwargs).pds(DID)
        finally:
            await client.aclose()

    return asyncio.run(run())


def padded_document(pds_url: str, size: int) -> str:
    return json.dumps({"id": DID, "alsoKnownAs": ["at://" + "a" * size], "service": [
        {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
         "serviceEndpoint": pds_url}]})


@pytest.mark.parametrize("gzipped", ["0", "1"])
def test_did_document_size_is_capped(hostile, gzipped: str) -> None:
    host = hostile(STANDIN_GZIP=gzipped)
    assert resolve(host.url) == host.url  # a normal document resolves
    (host.root / "dids" / f"{DID}.json").write_text(padded_document(host.url, 1024 * 1024))
    with pytest.raises(AtcdnError) as caught:
        resolve(host.url)
    assert caught.value.status == 502 and caught.value.error == "DidDocumentTooLarge"


def test_did_resolution_has_one_deadline(origin, hostile, edge_factory) -> None:
    """Each 1 KiB piece comes within the 1 s read timeout, the whole takes ~6 s: the
    resolution deadline (2 s) answers first."""
    host = hostile(STANDIN_DRIP="0.5")
    (host.root / "dids" / f"{DID}.json").write_text(padded_document(host.url, 12 * 1024))
    edge = edge_factory(origin.url, env={
        "ATCDN_PLC_URL": host.url, "ATCDN_EDGE_FETCH_TIMEOUT": "1",
        "ATCDN_EDGE_RESOLVE_TIMEOUT": "2"})
    started = time.monotonic()
    r = httpx.get(f"{edge.url}/blob/{DID}/{compute(b'x')}", timeout=30)
    took = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"] == "UpstreamTimeout", r.text
    assert took < 4.0


def test_resolver_cache_is_bounded(monkeypatch) -> None:
    async def run() -> Resolver:
        resolver = Resolver(httpx.AsyncClient(), "https://plc.invalid", max_entries=100)

        async def fake_fetch(did: str) -> str:
            return f"https://{did[8:]}.example"

        monkeypatch.setattr(resolver, "_fetch", fake_fetch)
        await resolver.pds(DID)
        for n in range(1000):
            await resolver.pds(f"did:plc:{n:024d}")
            await resolver.pds(DID)  # kept: recently used
        return resolver

    resolver = asyncio.run(run())
    assert len(resolver._cache) <= 100
    assert DID in resolver._cache


# -- hole 5: failures remembered, backoff per PDS, temp space bounded ------------------

def test_failed_blob_is_not_fetched_again_for_a_while(origin, hostile, edge_factory) -> None:
    pds = hostile(STANDIN_FLIP="1")
    cid = pds.add_blob(os.urandom(4000))
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    for _ in range(4):
        r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
        assert r.status_code == 502 and r.json()["error"] == "VerificationFailed"
    assert gets(pds, "/xrpc/com.atproto.sync.getBlob") == 1


def test_bomb_is_not_inflated_on_every_request(origin, hostile, edge_factory) -> None:
    pds = hostile(STANDIN_BOMB=str(BOMB))
    cid = compute(bytes(BOMB))
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    for _ in range(4):
        assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 502
    assert gets(pds, "/xrpc/com.atproto.sync.getBlob") == 1


def test_a_failing_pds_is_backed_off(origin, hostile, edge_factory) -> None:
    pds = hostile(STANDIN_FLIP="1")
    cids = [pds.add_blob(os.urandom(3000)) for _ in range(6)]
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    answers = [httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30) for cid in cids]
    assert [r.status_code for r in answers] == [502, 502, 502, 503, 503, 503]
    assert answers[-1].json()["error"] == "UpstreamBackoff"
    assert int(answers[-1].headers["retry-after"]) > 0
    assert gets(pds, "/xrpc/com.atproto.sync.getBlob") == 3


def test_fetch_temp_space_is_bounded(origin, hostile, edge_factory) -> None:
    """One stalled fetch holds 700 KB of the 1 MiB temp budget; a second fetch that
    would pass the budget is refused with 503 rather than filling the disk."""
    pds = hostile(STANDIN_STALL_AFTER="700000", STANDIN_STALL="4")
    first, second = os.urandom(800_000), os.urandom(750_000)
    first_cid, second_cid = pds.add_blob(first), pds.add_blob(second)
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url,
                                         "ATCDN_EDGE_FETCH_TEMP_SIZE": str(1024 * 1024)})
    results: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: results.update(
        first=httpx.get(f"{edge.url}/blob/{DID}/{first_cid}", timeout=30)))
    thread.start()
    tmp = edge.cache_dir / "tmp"
    deadline = time.monotonic() + 10
    while tree_size(tmp) < 700_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = httpx.get(f"{edge.url}/blob/{DID}/{second_cid}", timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "TempSpaceFull", r.text
    assert "retry-after" in r.headers
    thread.join()
    assert results["first"].status_code == 200 and results["first"].content == first
    # Not a failure of the PDS: asked again once there is room, it is served.
    r = httpx.get(f"{edge.url}/blob/{DID}/{second_cid}", timeout=30)
    assert r.status_code == 200 and r.content == second


# -- hole 1: per-stranger shares of an edge's cache -------------------------------------

def did(n: int) -> str:
    return f"did:plc:{'stranger' + 'bcdefghijk'[n]:a<24}"


def push(origin_url: str, data: bytes, owner: str = DID) -> str:
    from tests.helpers.env import TOKEN

    cid = compute(data)
    httpx.put(f"{origin_url}/blob/{cid}", content=data, params={"did": owner},
              headers={"authorization": f"Bearer {TOKEN}"}).raise_for_status()
    return cid


def test_quota_per_did_and_per_pds(tmp_path, hostile, edge_factory) -> None:
    """What one account, and one PDS, can make an edge fetch in a window is bounded:
    429 QuotaExceeded with Retry-After, naming whose quota; the operator's own blobs
    (pinned at the origin) are not counted."""
    from tests.helpers.nodes import running_origin

    pds = hostile()
    for n in range(4):
        pds.add_did(did(n), pds.url)
    with running_origin(tmp_path) as origin:
        pinned = push(origin.url, os.urandom(90_000), did(0))
        edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url,
                                             "ATCDN_EDGE_QUOTA_DID": "100000",
                                             "ATCDN_EDGE_QUOTA_PDS": "170000"})
        blobs = [pds.add_blob(os.urandom(60_000)) for _ in range(4)]
        get = lambda who, cid: httpx.get(f"{edge.url}/blob/{who}/{cid}", timeout=30)  # noqa: E731
        assert get(did(0), blobs[0]).status_code == 200
        refused = get(did(0), blobs[1])  # 60 KB of the account's 100 KB are used
        assert refused.status_code == 429, refused.headers
        assert refused.json()["error"] == "QuotaExceeded" and did(0) in refused.json()["message"]
        assert 0 < int(refused.headers["retry-after"]) <= 3600
        assert get(did(0), pinned).status_code == 200  # the operator's: not counted
        assert get(did(1), blobs[1]).status_code == 200  # another account: its own quota
        refused = get(did(2), blobs[2])  # the PDS has brought 120 KB of its 170 KB
        assert refused.status_code == 429, refused.headers
        assert "pds:" in refused.json()["message"]


def cached_sources(cache_dir: Path, cids: list[str]) -> list[str]:
    import diskcache
    from atcdn.edge import urls

    with diskcache.Cache(str(cache_dir / "disk")) as cache:
        return [cid for cid in cids if urls.source_key(cid) in cache]


def test_a_stranger_evicts_no_more_than_its_share(tmp_path, hostile, edge_factory) -> None:
    """The disk tier holds the operator's blobs; a stranger then makes the edge fetch
    twice the tier's size. The stranger's blobs never hold more than its share, so none
    of the operator's is pushed out."""
    from tests.helpers.nodes import running_origin

    pds = hostile()
    with running_origin(tmp_path) as origin:
        mine = [push(origin.url, os.urandom(200_000)) for _ in range(8)]  # 1.6 MB
        edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url,
                                             "ATCDN_EDGE_CACHE_SIZE": "3000000",
                                             "ATCDN_EDGE_SHARE_DID": "0.2"})
        for cid in mine:
            assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
        theirs = [pds.add_blob(os.urandom(200_000)) for _ in range(30)]  # 6 MB
        pds.add_did(did(9), pds.url)
        for cid in theirs:
            r = httpx.get(f"{edge.url}/blob/{did(9)}/{cid}", timeout=30)
            assert r.status_code == 200, r.text
        kept = cached_sources(edge.cache_dir, theirs)
        assert 0 < len(kept) * 200_000 <= 0.2 * 3_000_000, len(kept)
        assert kept == theirs[-len(kept):]  # its oldest went first
        assert cached_sources(edge.cache_dir, mine) == mine


def test_a_strangers_blobs_from_a_shield_count_against_its_share(tmp_path, hostile,
                                                                   edge_factory) -> None:
    """The same, with the edge fetching nothing from PDSes itself: a shielding origin
    pulls the stranger's blobs into its pulled tier and says so (``X-Atcdn-Tier``); the
    edge keeps them within the stranger's share, and the operator's stay."""
    from tests.helpers.nodes import running_origin

    pds = hostile()
    pds.add_did(did(9), pds.url)
    env = {"ATCDN_ORIGIN_PDS_PULL": "1", "ATCDN_PLC_URL": pds.url,
           "ATCDN_ALLOW_PRIVATE_NETWORKS": "1"}
    with running_origin(tmp_path, env=env) as origin:
        mine = [push(origin.url, os.urandom(200_000)) for _ in range(8)]  # 1.6 MB
        edge = edge_factory(origin.url, env={"ATCDN_PDS_FALLBACK": "0",
                                             "ATCDN_EDGE_CACHE_SIZE": "3000000",
                                             "ATCDN_EDGE_SHARE_DID": "0.2"})
        for cid in mine:
            assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
        theirs = [pds.add_blob(os.urandom(200_000)) for _ in range(30)]  # 6 MB
        for cid in theirs:
            r = httpx.get(f"{edge.url}/blob/{did(9)}/{cid}", timeout=30)
            assert r.status_code == 200, r.text
        assert edge.metric("atcdn_edge_pds_fetches_total") == 0  # all through the origin
        kept = cached_sources(edge.cache_dir, theirs)
        assert 0 < len(kept) * 200_000 <= 0.2 * 3_000_000, len(kept)
        assert cached_sources(edge.cache_dir, mine) == mine
