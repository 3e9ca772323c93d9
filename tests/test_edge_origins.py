"""An edge with several origins (edge/origins.py, docs/origins.md), all real processes:
each CID goes to its home origin on the ring; kill -9 of a home origin under a bounded
load costs no client error beyond requests in flight, and its CIDs go home again when it
is back; PDS-fetched blobs are handed to their home origin; every origin's takedown feed
is followed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.core.ring import Ring

from tests.helpers.env import ADMIN_TOKEN, TOKEN
from tests.helpers.nodes import (
    Edge,
    Origin,
    running_origins,
    start_edge,
    start_upstream,
)
from tests.helpers.pictures import DID

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LOAD = 200  # requests while the home origin is killed: one every SPACING s, 5 s
SPACING = 0.025
KILL_AT = 1.5  # seconds into the load
FAILOVER_GOAL = 5.0  # issue 11: from an origin's death to the first success it would serve


def blob(i: int) -> bytes:
    return f"blob {i} ".encode() * 64


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> float:
    """Seconds until ``condition()`` is true (fails after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition never held"
        time.sleep(0.05)
    return time.monotonic() - started


def served(origin: Origin) -> set[str]:
    """The CIDs ``origin`` answered GET /blob/<cid> with 200 (its JSON access log)."""
    cids = set()
    for line in origin.log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        path = entry.get("path", "")
        if (entry.get("method") == "GET" and path.startswith("/blob/")
                and entry.get("status") == 200):
            cids.add(path[len("/blob/"):].split("?", 1)[0])
    return cids


def origin_up(metrics: str, url: str) -> float:
    """``atcdn_edge_origin_up`` of ``url`` in an edge's /metrics text: 1 while every
    worker has it up."""
    for line in metrics.splitlines():
        if line.startswith("atcdn_edge_origin_up{") and f'origin="{url}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no atcdn_edge_origin_up for {url}")


def push(origin: Origin, data: bytes) -> str:
    r = httpx.put(f"{origin.url}/blob/{compute(data)}", params={"did": DID}, content=data,
                  headers=AUTH)
    assert r.status_code in (200, 201), r.text
    return compute(data)


def push_all(origins: list[Origin], data: bytes) -> str:
    for origin in origins:
        push(origin, data)
    return compute(data)


@pytest.fixture
def origins(tmp_path: Path) -> Iterator[list[Origin]]:
    """Three real origins, each with its own fs store, JSON access logs."""
    with running_origins(tmp_path, 3, {"ATCDN_LOG_FORMAT": "json"}) as nodes:
        yield nodes


@dataclass
class Answer:
    cid: str
    started: float
    ended: float
    outcome: int | str  # status, or the exception's name


async def bounded_load(edge: Edge, cids: list[str], victim: Origin
                       ) -> tuple[list[Answer], float, float]:
    """GET each CID once, one every SPACING s (each a cold miss); kill -9 ``victim`` at
    KILL_AT. Returns the answers, when it was killed, and when the edge marked it down."""
    answers: list[Answer] = []
    marked: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        async def one(cid: str) -> None:
            started = time.monotonic()
            try:
                r = await http.get(f"{edge.url}/blob/{DID}/{cid}")
                outcome: int | str = r.status_code
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            answers.append(Answer(cid, started, time.monotonic(), outcome))

        async def watch() -> None:
            while origin_up((await http.get(edge.url + "/metrics")).text, victim.url) == 1:
                await asyncio.sleep(0.05)
            marked.append(time.monotonic())

        tasks = []
        t0 = time.monotonic()
        killed = 0.0
        for n, cid in enumerate(cids):
            if not killed and n * SPACING >= KILL_AT:
                victim.stop(signal.SIGKILL)
                killed = time.monotonic()
                tasks.append(asyncio.create_task(watch()))
            await asyncio.sleep(max(0.0, t0 + n * SPACING - time.monotonic()))
            tasks.append(asyncio.create_task(one(cid)))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return answers, killed, marked[0]


def test_cids_go_home_fail_over_on_kill_and_come_back(origins: list[Origin], tmp_path: Path):
    urls = [o.url for o in origins]
    ring = Ring(urls)
    cids = [compute(blob(i)) for i in range(60 + LOAD + 90)]
    with httpx.Client() as http:  # every origin holds every blob (no shared store here)
        for origin in origins:
            for i, cid in enumerate(cids):
                r = http.put(f"{origin.url}/blob/{cid}", params={"did": DID}, content=blob(i),
                             headers=AUTH)
                assert r.status_code in (200, 201), r.text
    edge = start_edge(urls, tmp_path / "edge", tmp_path / "edge.log", workers=2,
                      env={"ATCDN_PDS_FALLBACK": "0"})
    try:
        health = httpx.get(edge.url + "/health").json()
        assert health["status"] == "ok"
        assert [o["url"] for o in health["origins"]] == urls
        assert all(o["state"] == "up" for o in health["origins"])

        # 1. Each CID is asked of its home origin only, and the homes spread.
        spread, loaded, fresh = cids[:60], cids[60:60 + LOAD], cids[60 + LOAD:]
        for cid in spread:
            r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
            assert r.status_code == 200 and compute(r.content) == cid
        time.sleep(0.3)  # access lines are written within 50 ms
        for origin in origins:
            mine = {c for c in spread if ring.home(c) == origin.url}
            assert len(mine) >= 8, "the ring left an origin nearly idle"
            assert served(origin) == mine

        # 2. kill -9 of one origin under a bounded load of cold misses.
        victim = origins[0]
        answers, killed, marked = asyncio.run(bounded_load(edge, loaded, victim))
        in_flight = [a for a in answers if a.started <= killed <= a.ended]
        failed = [a for a in answers if a.outcome != 200]
        assert all(a in in_flight for a in failed), failed  # only requests in flight
        assert len(answers) == LOAD
        orphans = sorted((a for a in answers if ring.home(a.cid) == victim.url
                          and a.started >= killed and a.outcome == 200), key=lambda a: a.ended)
        assert orphans, "no CID of the dead origin was asked after the kill"
        failover = orphans[0].ended - killed
        assert failover <= FAILOVER_GOAL, failover
        assert marked - killed <= FAILOVER_GOAL  # then its CIDs go straight to the next
        print(f"\nfailover: first success for a CID of the killed origin {failover * 1000:.0f} ms"
              f" after the kill; {len(failed)} errors of {len(in_flight)} in flight; origin"
              f" marked down by a worker {(marked - killed) * 1000:.0f} ms after the kill")
        health = httpx.get(edge.url + "/health").json()
        assert health["status"] == "ok"  # two origins still up: ready
        state = {o["url"]: o for o in health["origins"]}
        assert state[victim.url]["state"] == "down" and state[victim.url]["reason"]
        # Its CIDs went to the next origin on their ring order; the others stayed home.
        time.sleep(0.3)
        after = {a.cid for a in answers if a.started > killed + 0.5}
        for origin in origins[1:]:
            expected = {c for c in after if ring.order(c)[0] == origin.url
                        or (ring.order(c)[0] == victim.url and ring.order(c)[1] == origin.url)}
            assert expected <= served(origin)
            assert not (served(origin) & {c for c in spread if ring.home(c) != origin.url})
        assert edge.metric("atcdn_edge_origin_failovers_total") >= 1

        # 3. It comes back: its CIDs go home again.
        victim.start()
        back = wait_for(lambda: origin_up(httpx.get(edge.url + "/metrics").text,
                                          victim.url) == 1)
        print(f"origin back: every edge worker sends its CIDs home {back:.1f} s after it answers")
        assert httpx.get(edge.url + "/health").json()["origins"][0]["state"] == "up"
        before = served(victim)
        homecoming = [c for c in fresh if ring.home(c) == victim.url][:15]
        for cid in homecoming:
            assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
        wait_for(lambda: served(victim) - before == set(homecoming), timeout=5)
        text = httpx.get(edge.url + "/metrics").text
        assert f'atcdn_edge_origin_requests_total{{origin="{victim.url}",result="200"}}' in text
        status = httpx.get(edge.url + "/status").text
        assert all(f"origin {url}" in status for url in urls)
    finally:
        edge.proc.stop()


def test_pds_fetched_blobs_are_handed_to_their_home_origin(origins: list[Origin],
                                                           tmp_path: Path):
    pds = start_upstream(tmp_path / "pds")
    pds.add_did(DID, pds.url)
    edge = start_edge([o.url for o in origins], tmp_path / "edge", tmp_path / "edge.log",
                      env={"ATCDN_PLC_URL": pds.url})
    try:
        ring = Ring(o.url for o in origins)
        cids = [pds.add_blob(blob(1000 + i)) for i in range(6)]
        for cid in cids:
            assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
        for cid in cids:
            for origin in origins:
                url = f"{origin.url}/blob/{cid}?did={DID}"
                if origin.url == ring.home(cid):
                    wait_for(lambda url=url: httpx.get(url).status_code == 200)
                else:
                    assert httpx.get(url).status_code == 404
    finally:
        edge.proc.stop()
        pds.proc.stop()


def test_every_origins_takedown_feed_is_followed(origins: list[Origin], tmp_path: Path):
    """Each origin keeps its own feed: a takedown recorded at any origin reaches the edge,
    also while another origin is down."""
    a, b = origins[:2]
    ring = Ring([a.url, b.url])
    edge = start_edge([a.url, b.url], tmp_path / "edge", tmp_path / "edge.log",
                      env={"ATCDN_PDS_FALLBACK": "0", "ATCDN_TAKEDOWN_POLL_INTERVAL": "0.5"})
    try:
        cids = []
        for i in range(40):
            for origin in (a, b):
                push(origin, blob(2000 + i))
            cids.append(compute(blob(2000 + i)))
        x = next(c for c in cids if ring.home(c) == a.url)
        y = next(c for c in cids if ring.home(c) == b.url)
        for cid in (x, y):
            assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
        # At b, the origin that never served x.
        httpx.post(f"{b.url}/admin/takedown", json={"cid": x}, headers=ADMIN).raise_for_status()
        wait_for(lambda: httpx.get(f"{edge.url}/blob/{DID}/{x}").status_code == 451)
        # At a, while b (y's home) is down.
        b.stop(signal.SIGKILL)
        httpx.post(f"{a.url}/admin/takedown", json={"cid": y}, headers=ADMIN).raise_for_status()
        wait_for(lambda: httpx.get(f"{edge.url}/blob/{DID}/{y}").status_code == 451)
    finally:
        edge.proc.stop()


def test_an_origin_whose_health_answers_5xx_is_down_until_it_passes(tmp_path: Path):
    """Stand-in origins (an origin's /health failing needs a failed store): 5xx on /health
    moves its CIDs to the next origin; a passed check brings them home."""
    stand_ins = [start_upstream(tmp_path / f"s{i}") for i in range(2)]
    try:
        urls = [s.url for s in stand_ins]
        ring = Ring(urls)
        cids = [compute(blob(3000 + i)) for i in range(30)]
        for s in stand_ins:  # both hold every blob
            for i in range(30):
                s.add_blob(blob(3000 + i))
        edge = start_edge(urls, tmp_path / "edge", tmp_path / "edge.log",
                          env={"ATCDN_PDS_FALLBACK": "0"})
        try:
            sick, well = stand_ins
            mine = [c for c in cids if ring.home(c) == sick.url]
            (sick.root / "unhealthy").touch()
            down = wait_for(lambda: origin_up(httpx.get(edge.url + "/metrics").text,
                                              sick.url) == 0, timeout=5)
            for cid in mine[:5]:
                assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
            asked = "\n".join(sick.requests())
            assert not any(cid in asked for cid in mine[:5])  # not even tried
            assert all(cid in "\n".join(well.requests()) for cid in mine[:5])
            reason = {o["url"]: o for o in httpx.get(edge.url + "/health").json()["origins"]}
            assert "HTTP 503" in reason[sick.url]["reason"]
            (sick.root / "unhealthy").unlink()
            wait_for(lambda: origin_up(httpx.get(edge.url + "/metrics").text, sick.url) == 1,
                     timeout=5)
            for cid in mine[5:10]:
                assert httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30).status_code == 200
            assert all(cid in "\n".join(sick.requests()) for cid in mine[5:10])
            print(f"\n/health 503: marked down within {down:.1f} s")
        finally:
            edge.proc.stop()
    finally:
        for s in stand_ins:
            s.proc.stop()


def test_a_frozen_origin_times_out_and_is_marked_down(origins: list[Origin], tmp_path: Path):
    """SIGSTOP: the origin accepts connections and never answers (a hung host)."""
    urls = [o.url for o in origins]
    ring = Ring(urls)
    victim = origins[0]
    cids = [c for c in (push_all(origins, blob(4000 + i)) for i in range(60))
            if ring.home(c) == victim.url]
    edge = start_edge(urls, tmp_path / "edge", tmp_path / "edge.log",
                      env={"ATCDN_PDS_FALLBACK": "0", "ATCDN_EDGE_FETCH_TIMEOUT": "3"})
    try:
        os.killpg(victim.proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()

        async def in_flight() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as http:
                answers = await asyncio.gather(*(http.get(f"{edge.url}/blob/{DID}/{c}")
                                                 for c in cids[:4]))
            return [a.status_code for a in answers]

        assert asyncio.run(in_flight()) == [200] * 4  # timed out, then the next origin
        assert time.monotonic() - frozen < 3 + 2  # one fetch timeout, then at once
        wait_for(lambda: origin_up(httpx.get(edge.url + "/metrics").text, victim.url) == 0,
                 timeout=5)
        marked = time.monotonic() - frozen
        assert marked <= FAILOVER_GOAL
        failovers = httpx.get(edge.url + "/metrics").text
        assert (f'atcdn_edge_origin_failovers_total{{origin="{victim.url}",reason="failed"}} 4.0'
                in failovers)
        started = time.monotonic()
        assert httpx.get(f"{edge.url}/blob/{DID}/{cids[4]}", timeout=30).status_code == 200
        assert time.monotonic() - started < 1.0  # straight to the next origin
        print(f"\nfrozen origin: marked down {marked:.1f} s after the freeze")
        os.killpg(victim.proc.pid, signal.SIGCONT)
        wait_for(lambda: origin_up(httpx.get(edge.url + "/metrics").text, victim.url) == 1,
                 timeout=5)
        time.sleep(0.2)
        before = served(victim)
        assert httpx.get(f"{edge.url}/blob/{DID}/{cids[5]}", timeout=30).status_code == 200
        wait_for(lambda: cids[5] in served(victim) - before, timeout=5)
    finally:
        os.killpg(victim.proc.pid, signal.SIGCONT)
        edge.proc.stop()
