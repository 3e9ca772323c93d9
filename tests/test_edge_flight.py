"""Single-flight shares only identical work, and purges reach work in flight.

Attacks first (issue 9, hole 4): a DID whose PLC entry stalls and then names no PDS
must not make a request for the same CID under another DID wait for, or get, its
answer. Then the deadlines every wait carries, and takedowns/purges that arrive while a
fetch is running (issue 8: nothing finished after a purge may land in the cache).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core.errors import AtcdnError
from atcdn.core.flight import SingleFlight

from tests.helpers.env import TOKEN
from tests.helpers.nodes import Upstream, start_upstream
from tests.helpers.pictures import DID, photo

GOOD = DID
EVIL = "did:plc:" + "e" * 24
STALL = 6.0
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Upstream, Upstream]]:
    """An origin without the blob, and a PLC directory + PDS: GOOD names the PDS; EVIL's
    entry stalls, then is unknown ("names no PDS")."""
    origin = start_upstream(tmp_path / "origin")
    (origin.root / "origin-empty").touch()
    pds = start_upstream(tmp_path / "pds")
    pds.add_did(GOOD, pds.url)
    pds.stall_did(EVIL, STALL)
    try:
        yield origin, pds
    finally:
        origin.proc.stop()
        pds.proc.stop()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def in_background(url: str) -> tuple[threading.Thread, dict[str, httpx.Response]]:
    answer: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: answer.update(r=httpx.get(url, timeout=60)))
    thread.start()
    return thread, answer


@pytest.mark.parametrize("route", ["/blob/{did}/{cid}", "/img/avatar/plain/{did}/{cid}@jpeg"])
def test_one_dids_failure_never_answers_anothers(world, edge_factory, route: str) -> None:
    origin, pds = world
    cid = pds.add_blob(photo(200, 100, seed=21))
    edge = edge_factory(origin.url, env={"ATCDN_PLC_URL": pds.url})
    attacker, answer = in_background(edge.url + route.format(did=EVIL, cid=cid))
    wait_for(lambda: any(line.startswith(f"GET /{EVIL}") for line in pds.requests()))
    started = time.monotonic()
    victim = httpx.get(edge.url + route.format(did=GOOD, cid=cid), timeout=60)
    assert victim.status_code == 200, victim.text
    assert time.monotonic() - started < STALL / 2  # did not wait for the attacker's fetch
    attacker.join()
    assert answer["r"].status_code == 404 and "names no PDS" in answer["r"].json()["message"]


def test_every_wait_has_a_deadline(tmp_path: Path) -> None:
    flight = SingleFlight(tmp_path / "locks", deadline=0.3)

    async def stuck() -> bytes:
        await asyncio.sleep(60)
        return b""

    async def main() -> list[object]:
        return await asyncio.gather(flight.run("k", stuck), flight.run("k", stuck),
                                    return_exceptions=True)

    started = time.monotonic()
    results = asyncio.run(main())
    assert time.monotonic() - started < 5
    assert [(type(r), getattr(r, "status", None)) for r in results] == [(AtcdnError, 504)] * 2


def test_a_timeout_inside_the_work_is_not_the_deadline(tmp_path: Path) -> None:
    flight = SingleFlight(tmp_path / "locks", deadline=30)

    async def times_out() -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        asyncio.run(flight.run("k", times_out))


@pytest.mark.parametrize("action", ["takedown", "purge"])
def test_a_purge_reaches_a_fetch_in_flight(tmp_path: Path, edge_factory, action: str) -> None:
    """The origin answers after 2 s; a takedown or purge arrives meanwhile: the fetched
    blob must not be cached (the next request fetches again) and, for a takedown, the
    request in flight is refused too."""
    up = start_upstream(tmp_path / "upstream", env={"STANDIN_DELAY": "2"})
    try:
        cid = up.add_blob(photo(300, 200, seed=22))
        edge = edge_factory(up.url, env={"ATCDN_PDS_FALLBACK": "0"})
        url = f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg"
        fetches = lambda: sum(1 for line in up.requests() if line.startswith(f"GET /blob/{cid}"))  # noqa: E731
        request, answer = in_background(url)
        wait_for(lambda: fetches() == 1)
        r = httpx.post(f"{edge.url}/admin/{action}", json={"cid": cid}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        request.join()
        if action == "takedown":
            assert answer["r"].status_code == 451
            httpx.post(f"{edge.url}/admin/restore", json={"cid": cid},
                       headers=AUTH, timeout=30).raise_for_status()
        else:
            assert answer["r"].status_code in (200, 503), answer["r"].text
        assert httpx.get(url, timeout=30).status_code == 200
        assert fetches() == 2  # nothing of the fetch in flight was kept
        assert httpx.get(url, timeout=30).status_code == 200
        assert fetches() == 2  # and the new one was
    finally:
        up.proc.stop()
