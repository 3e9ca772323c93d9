"""The origin as the shield (issue 11, part 1): with ``ATCDN_ORIGIN_PDS_PULL=1`` a miss
under ``?did=`` is pulled from that DID's PDS by the origin itself, once for all its
workers, verified, into the pulled tier.

Attacks first: hostile stand-in PDSes (tests/helpers/standins.py, real processes) against
a real origin process — a gzip bomb, lying bytes, a stall, one DID's failure next to
another DID's request for the same CID, a quota used up. Then the reference PDS
(tests/pds): a herd of cold requests on a multi-worker origin costs it one getBlob, and
an edge with no PDS access serves any blob through the origin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute

from tests.helpers.env import ADMIN_TOKEN
from tests.helpers.nodes import Origin, Upstream, running_origin, start_upstream
from tests.helpers.pictures import DID, photo

OTHER = "did:plc:" + "o" * 24
BOMB = 16 * 1024 * 1024  # zeros; ~16 KB gzipped
PULL_ON = {"ATCDN_ORIGIN_PDS_PULL": "1", "ATCDN_ALLOW_PRIVATE_NETWORKS": "1"}


def metric(url: str, name: str) -> float:
    """Sum of every sample of ``name`` on a node's /metrics."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def get_blobs(up: Upstream) -> int:
    return sum(1 for line in up.requests() if line.startswith("GET /xrpc/com.atproto.sync.getBlob"))


def stored_files(origin: Origin) -> list[Path]:
    """Every blob file and temp file of the origin's stores."""
    return [p for p in origin.data_dir.rglob("*") if p.is_file()
            and {"blobs", "tmp"} & set(p.relative_to(origin.data_dir).parts)]


@pytest.fixture
def shield(tmp_path: Path) -> Iterator[Callable[..., Origin]]:
    """Start real origins with PDS pull on, resolving through ``plc``."""
    with ExitStack() as stack:
        def start(plc: str, **env: str) -> Origin:
            folder = tmp_path / f"origin{len(stack._exit_callbacks)}"
            folder.mkdir()
            return stack.enter_context(running_origin(
                folder, env={**PULL_ON, "ATCDN_PLC_URL": plc, **env}))

        yield start


# -- attacks ----------------------------------------------------------------------------

def test_gzip_bomb_is_refused_stores_nothing_and_is_remembered(hostile, shield) -> None:
    pds = hostile(STANDIN_BOMB=str(BOMB))
    origin = shield(pds.url)
    cid = compute(bytes(BOMB))
    for _ in range(3):
        assert httpx.head(f"{origin.url}/blob/{cid}?did={DID}", timeout=30).status_code == 502
    r = httpx.get(f"{origin.url}/blob/{cid}?did={DID}", timeout=30)
    assert r.status_code == 502 and r.json()["error"] == "InflatedTooFar", r.text
    assert stored_files(origin) == []
    assert get_blobs(pds) == 1  # the PDS's failure is remembered
    assert metric(origin.url, "atcdn_origin_pull_bytes_total") < 1024 * 1024


def test_lying_pds_is_502_and_nothing_is_stored(hostile, shield) -> None:
    pds = hostile(STANDIN_FLIP="1")
    data = photo(64, 64)
    cid = pds.add_blob(data)
    origin = shield(pds.url)
    r = httpx.get(f"{origin.url}/xrpc/com.atproto.sync.getBlob",
                  params={"did": DID, "cid": cid}, timeout=30)
    assert r.status_code == 502 and r.json()["error"] == "VerificationFailed", r.text
    assert stored_files(origin) == []
    assert httpx.get(f"{origin.url}/blob/{cid}", timeout=30).status_code == 404
    assert metric(origin.url, "atcdn_origin_verification_failures_total") == 1


def test_stalling_pds_meets_the_deadline(hostile, shield) -> None:
    """A PDS that sends 1 KB then nothing: every waiter is answered 504 within the pull
    timeout, and the half-received bytes are gone."""
    pds = hostile(STANDIN_STALL_AFTER="1000", STANDIN_STALL="30")
    plc = hostile()  # the staller would stall its DID documents too
    plc.add_did(DID, pds.url)
    cid = pds.add_blob(photo(300, 300))
    origin = shield(plc.url, ATCDN_ORIGIN_PULL_TIMEOUT="2")
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda _: httpx.get(f"{origin.url}/blob/{cid}?did={DID}", timeout=30), range(4)))
    assert time.monotonic() - started < 8
    assert [r.status_code for r in answers] == [504] * 4, [r.text for r in answers]
    assert answers[0].json()["error"] == "UpstreamTimeout"
    assert get_blobs(pds) == 1
    assert stored_files(origin) == []


def test_one_dids_failure_never_answers_another_did(tmp_path: Path, shield) -> None:
    """OTHER names a PDS that stalls, then lies about the CID; DID's own PDS has the
    blob. DID's request, made while OTHER's pull is in flight, neither waits for it nor
    gets its error; OTHER is never served DID's copy, nor made its holder."""
    good = start_upstream(tmp_path / "good")
    bad = start_upstream(tmp_path / "bad", env={"STANDIN_FLIP": "1",
                                                "STANDIN_STALL_AFTER": "100",
                                                "STANDIN_STALL": "2"})
    try:
        data = photo(128, 128)
        cid = good.add_blob(data)
        bad.add_blob(data)
        good.add_did(DID, good.url)
        good.add_did(OTHER, bad.url)
        origin = shield(good.url)
        answers: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: answers.update(
            other=httpx.get(f"{origin.url}/blob/{cid}?did={OTHER}", timeout=30)))
        thread.start()
        time.sleep(0.5)  # OTHER's pull is stalled mid-body now
        started = time.monotonic()
        mine = httpx.get(f"{origin.url}/blob/{cid}?did={DID}", timeout=30)
        assert mine.status_code == 200 and mine.content == data
        assert time.monotonic() - started < 1.5  # did not wait for OTHER's pull
        thread.join()
        assert answers["other"].status_code == 502
        assert answers["other"].json()["error"] == "VerificationFailed"
        # Stored now, but OTHER's PDS never served it: OTHER is still refused.
        again = httpx.get(f"{origin.url}/blob/{cid}?did={OTHER}", timeout=30)
        assert again.status_code == 502
        assert get_blobs(bad) == 1 and get_blobs(good) == 1
    finally:
        good.proc.stop()
        bad.proc.stop()


def test_quota_is_429_and_then_asks_the_pds_nothing(hostile, shield) -> None:
    pds = hostile()
    first, second, third, fourth = (pds.add_blob(bytes([n]) * 6000) for n in range(4))
    origin = shield(pds.url, ATCDN_ORIGIN_PULLED_QUOTA_DID="10000")
    assert httpx.get(f"{origin.url}/blob/{first}?did={DID}", timeout=30).status_code == 200
    r = httpx.get(f"{origin.url}/blob/{second}?did={DID}", timeout=30)
    assert r.status_code == 429 and r.json()["error"] == "QuotaExceeded", r.text
    assert int(r.headers["retry-after"]) > 0
    assert httpx.get(f"{origin.url}/blob/{second}", timeout=30).status_code == 404
    # Used up: refused before the PDS is asked.
    pds.add_blob(b"x" * 4000)
    assert httpx.get(f"{origin.url}/blob/{compute(b'x' * 4000)}?did={DID}",
                     timeout=30).status_code == 200
    asked = get_blobs(pds)
    for cid in (third, fourth):
        assert httpx.get(f"{origin.url}/blob/{cid}?did={DID}", timeout=30).status_code == 429
    assert get_blobs(pds) == asked
    assert metric(origin.url, "atcdn_origin_quota_refusals_total") == 3


def test_taken_down_is_451_before_any_pull(hostile, shield) -> None:
    """An account takedown, or a CID takedown, is answered without asking the PDS: a
    shield must not fetch what it may not serve."""
    pds = hostile()
    cid = pds.add_blob(b"taken down before anyone asked")
    origin = shield(pds.url)
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    for target, did in (({"did": DID}, DID), ({"cid": cid}, OTHER)):
        r = httpx.post(f"{origin.url}/admin/takedown", json=target, headers=admin, timeout=10)
        assert r.status_code == 200, r.text
        r = httpx.get(f"{origin.url}/blob/{cid}?did={did}", timeout=30)
        assert r.status_code == 451 and r.json()["error"] == "TakenDown", r.text
    assert get_blobs(pds) == 0 and pds.requests() == []


def test_pull_off_is_404_as_before(hostile, tmp_path: Path) -> None:
    pds = hostile()
    cid = pds.add_blob(b"only on the pds")
    with running_origin(tmp_path, env={"ATCDN_PLC_URL": pds.url,
                                                 "ATCDN_ALLOW_PRIVATE_NETWORKS": "1"}) as origin:
        r = httpx.get(f"{origin.url}/blob/{cid}?did={DID}", timeout=30)
        assert r.status_code == 404 and r.json()["error"] == "BlobNotFound"
    assert pds.requests() == []


def test_unknown_blob_is_404_and_remembered_briefly(hostile, shield) -> None:
    pds = hostile()
    origin = shield(pds.url)
    cid = compute(b"never on the pds")
    for _ in range(3):
        r = httpx.get(f"{origin.url}/blob/{cid}?did={DID}", timeout=30)
        assert r.status_code == 404 and r.json()["error"] == "BlobNotFound"
    assert get_blobs(pds) == 1


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_concurrent_misses_on_two_workers_cost_one_getblob(hostile, shield, server) -> None:
    """A slow PDS (1 s mid-body) and 24 concurrent cold requests on a two-worker
    origin, under either server: one getBlob, every answer the verified bytes."""
    pds = hostile(STANDIN_STALL_AFTER="5000", STANDIN_STALL="1")
    data = photo(400, 300)
    cid = pds.add_blob(data)
    origin = shield(pds.url, ATCDN_ORIGIN_WORKERS="2", ATCDN_ORIGIN_SERVER=server)
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(
            lambda n: httpx.request("HEAD" if n % 4 == 0 else "GET",
                                    f"{origin.url}/blob/{cid}?did={DID}", timeout=30),
            range(24)))
    assert [r.status_code for r in answers] == [200] * 24
    assert all(compute(r.content) == cid for r in answers if r.request.method == "GET")
    assert get_blobs(pds) == 1
    assert metric(origin.url, "atcdn_origin_pds_pulls_total") == 1
    assert metric(origin.url, "atcdn_origin_pulled_bytes") == len(data)  # evictable tier


# -- against the reference PDS ------------------------------------------------------------

@pytest.fixture(scope="module")
def author(pds):  # type: ignore[no-untyped-def]
    return pds.create_account("shielded.test")


def test_reference_pds_herd_costs_one_getblob(pds, author, tmp_path: Path) -> None:
    data = photo(640, 480, seed=11)
    _, (cid,) = author.post_images(data)
    env = {**PULL_ON, "ATCDN_PLC_URL": pds.plc_url, "ATCDN_ORIGIN_WORKERS": "2"}
    with running_origin(tmp_path, env=env) as origin, ThreadPoolExecutor(32) as pool:
        def get(n: int) -> httpx.Response:
            if n % 2:
                return httpx.get(f"{origin.url}/blob/{cid}?did={author.did}", timeout=60)
            return httpx.get(f"{origin.url}/xrpc/com.atproto.sync.getBlob",
                             params={"did": author.did, "cid": cid}, timeout=60)

        answers = list(pool.map(get, range(64)))
        assert [r.status_code for r in answers] == [200] * 64
        assert all(compute(r.content) == cid for r in answers)
        assert answers[0].headers["content-type"] == "image/jpeg"
        # Another account does not hold it: its own PDS says so (400), so 404.
        other = pds.create_account("bystander.test")
        r = httpx.get(f"{origin.url}/blob/{cid}?did={other.did}", timeout=60)
        assert r.status_code == 404
    served = [line for line in pds.get_blob_log() if line["cid"] == cid]
    assert [(line["did"], line["status"]) for line in served if line["did"] == author.did] \
        == [(author.did, 200)]


def test_edge_without_pds_access_serves_through_the_shield(pds, author, tmp_path: Path,
                                                          edge_factory) -> None:
    data = photo(800, 600, seed=12)
    _, (cid,) = author.post_images(data)
    env = {**PULL_ON, "ATCDN_PLC_URL": pds.plc_url, "ATCDN_ORIGIN_WORKERS": "2"}
    with running_origin(tmp_path, env=env) as origin:
        # No PDS fallback, a PLC that is not there, and the SSRF guard on.
        edges = [edge_factory(origin.url, env={
            "ATCDN_PDS_FALLBACK": "0", "ATCDN_PLC_URL": "http://127.0.0.1:9",
            "ATCDN_ALLOW_PRIVATE_NETWORKS": "0"}) for _ in range(2)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(
                lambda n: httpx.get(f"{edges[n % 2].url}/blob/{author.did}/{cid}", timeout=60),
                range(16)))
        assert [r.status_code for r in answers] == [200] * 16
        assert all(r.content == data for r in answers)
        image = httpx.get(f"{edges[0].url}/img/feed_thumbnail/plain/{author.did}/{cid}@jpeg",
                          timeout=60)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert all(edge.metric("atcdn_edge_pds_fetches_total") == 0 for edge in edges)
    assert [line["status"] for line in pds.get_blob_log() if line["cid"] == cid] == [200]


def test_edge_passes_on_the_shields_quota_and_timeout(hostile, shield, edge_factory) -> None:
    """Behind a shield, a used-up pull quota is the edge's 429 (not a 502 that reads as
    an outage) and a pull that ran out of time is its 504, asked of the origin once (a
    504 already waited its deadline: no retry, so no second pull)."""
    pds = hostile()
    first, second = (pds.add_blob(bytes([n]) * 6000) for n in range(2))
    origin = shield(pds.url, ATCDN_ORIGIN_PULLED_QUOTA_DID="10000")
    edge = edge_factory(origin.url, env={"ATCDN_PDS_FALLBACK": "0"})
    assert httpx.get(f"{edge.url}/blob/{DID}/{first}", timeout=30).status_code == 200
    r = httpx.get(f"{edge.url}/blob/{DID}/{second}", timeout=30)
    assert r.status_code == 429 and r.json()["error"] == "QuotaExceeded", r.text
    assert int(r.headers["retry-after"]) > 0

    slow = hostile(STANDIN_STALL_AFTER="1000", STANDIN_STALL="30")
    plc = hostile()
    plc.add_did(DID, slow.url)
    cid = slow.add_blob(photo(300, 300))
    origin = shield(plc.url, ATCDN_ORIGIN_PULL_TIMEOUT="2")
    edge = edge_factory(origin.url, env={"ATCDN_PDS_FALLBACK": "0"})
    r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
    assert r.status_code == 504 and r.json()["error"] == "UpstreamTimeout", r.text
    assert get_blobs(slow) == 1
