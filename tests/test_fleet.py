"""A fleet on this machine (tests/helpers/fleet.py): a SeaweedFS cluster, two origins that
pull from the PDS themselves, three edges with no PDS access sharing both origins, HAProxy
in front, the reference PDS as the only holder of the blobs.

- A hug of death: 2,000 concurrent cold requests for one image spread over the three
  edges directly (bypassing HAProxy, the worst case) cost the PDS exactly one getBlob,
  with no error.
- Under a bounded load through HAProxy, one origin, one volume server and one edge are
  killed with SIGKILL in turn: no blob is lost, and only requests in flight at a kill
  may fail; each node started again, the fleet heals with no operator.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.core.settings import EdgeSettings, OriginSettings

from tests.helpers.env import need_tool
from tests.helpers.fleet import Fleet, running_fleet, seaweed_cluster
from tests.helpers.herd import stampede
from tests.helpers.labeler import jpeg, takedown_feed
from tests.helpers.pds import ReferencePDS, User

SHIELD = "pds_pull" in OriginSettings.model_fields  # ATCDN_ORIGIN_PDS_PULL (origin/shield)
RING = hasattr(EdgeSettings, "origins")  # several --origin, one home per CID (edge ring)
pytestmark = pytest.mark.skipif(
    not (SHIELD and RING),
    reason="the fleet needs the origin's PDS pull (ATCDN_ORIGIN_PDS_PULL) and edges with"
           f" several origins (ATCDN_EDGE_ORIGIN=a,b); here: pull {SHIELD}, origins {RING}")

HUG = 2000  # concurrent cold requests for one image
WARM, COLD = 12, 24  # blobs cached before the load; blobs first asked for during it
LOAD_SECONDS = 9.0
CLIENTS = 8


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest, moto: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    weed, haproxy = need_tool("weed"), need_tool("haproxy")
    work = tmp_path_factory.mktemp("fleet")
    with ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        # The store boots while the reference PDS does.
        booting = pool.submit(stack.enter_context, seaweed_cluster(weed, work))
        pds: ReferencePDS = request.getfixturevalue("pds")
        with running_fleet(work, booting.result(), haproxy=haproxy, plc_url=pds.plc_url,
                           feed_env=takedown_feed(moto)) as running:
            yield running


@pytest.fixture(scope="module")
def user(pds: ReferencePDS) -> User:
    return pds.create_account(f"fleet{uuid.uuid4().hex[:6]}.test")


def post(user: User, count: int, seed: int) -> list[str]:
    """``count`` images posted by ``user`` (four to a post); their CIDs."""
    cids: list[str] = []
    for start in range(0, count, 4):
        images = [jpeg(seed + n, (200 + seed + n, 150))  # distinct sizes: distinct CIDs
                  for n in range(start, min(count, start + 4))]
        cids += user.post_images(*images)[1]
    return cids


def getblobs(pds: ReferencePDS, cid: str) -> int:
    return sum(1 for entry in pds.get_blob_log() if entry["cid"] == cid)


def test_a_hug_of_death_on_every_edge_costs_the_pds_one_getblob(
        fleet: Fleet, pds: ReferencePDS, user: User) -> None:
    [cid] = post(user, 1, seed=1)
    edges = list(fleet.edges.values())
    urls = [f"{edges[n % len(edges)].url}/img/feed_thumbnail/plain/{user.did}/{cid}@jpeg"
            for n in range(HUG)]
    result = asyncio.run(stampede(urls, timeout=60))
    assert result["outcomes"] == {"200": HUG}, result
    assert result["distinct_bodies"] == 1
    assert getblobs(pds, cid) == 1


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    answer: int | str


async def run_load(pop: str, did: str, warm: list[str], cold: list[str],
                   kills: list[tuple[float, Callable[[], None]]]) -> tuple[
                       list[Outcome], list[tuple[float, float]]]:
    """``CLIENTS`` clients through HAProxy for ``LOAD_SECONDS``, the cold blobs asked for
    one after another over the whole run (so each kill meets blobs no edge has yet);
    the kills run at their offsets. Returns every request's outcome and each kill's
    (before, after) instants."""
    began = time.monotonic()
    outcomes: list[Outcome] = []
    killed: list[tuple[float, float]] = []

    def released() -> list[str]:
        share = (time.monotonic() - began) / LOAD_SECONDS
        return warm + cold[:max(1, int(share * len(cold)) + 1)]

    async with httpx.AsyncClient(timeout=30) as http:
        async def client(n: int) -> None:
            i = n
            while time.monotonic() - began < LOAD_SECONDS:
                blobs = released()
                cid = blobs[-1 - (i % 3)] if i % 2 else blobs[i % len(blobs)]
                path = (f"/blob/{did}/{cid}" if i % 3 else
                        f"/img/feed_thumbnail/plain/{did}/{cid}@jpeg")
                i += 1
                started = time.monotonic()
                try:
                    answer: int | str = (await http.get(pop + path)).status_code
                except httpx.HTTPError as exc:
                    answer = type(exc).__name__
                outcomes.append(Outcome(started, time.monotonic(), answer))

        async def killer() -> None:
            for offset, kill in kills:
                await asyncio.sleep(max(0.0, began + offset - time.monotonic()))
                before = time.monotonic()
                await asyncio.to_thread(kill)
                killed.append((before, time.monotonic()))

        await asyncio.gather(killer(), *(client(n) for n in range(CLIENTS)))
    return outcomes, killed


def test_killing_an_origin_a_volume_server_and_an_edge_under_load(
        fleet: Fleet, pds: ReferencePDS, user: User) -> None:
    warm, cold = post(user, WARM, seed=100), post(user, COLD, seed=200)
    with httpx.Client(timeout=30) as http:
        for cid in warm:
            assert http.get(f"{fleet.pop}/blob/{user.did}/{cid}").status_code == 200
    kills = [(1.5, lambda: fleet.origins[0].stop(signal.SIGKILL)),
             (4.0, fleet.cluster.volumes[0].kill),
             (6.5, lambda: fleet.edges["e1"].proc.stop(signal.SIGKILL))]
    outcomes, killed = asyncio.run(run_load(fleet.pop, user.did, warm, cold, kills))

    failed = [o for o in outcomes if o.answer != 200]
    in_flight = [o for o in failed
                 if any(o.started <= after and o.ended >= before for before, after in killed)]
    assert len(outcomes) > 200
    assert failed == in_flight, Counter(o.answer for o in failed if o not in in_flight)
    # The origin's death was met (edges moved CIDs off it), and cost the PDS at most one
    # more getBlob per blob (its other origin pulling what the dead one had pulled).
    survivors = [e for name, e in fleet.edges.items() if name != "e1"]
    assert sum(e.metric("atcdn_edge_origin_failovers_total") for e in survivors) > 0
    pulls = Counter(entry["cid"] for entry in pds.get_blob_log())
    assert all(1 <= pulls[cid] <= 2 for cid in warm + cold), pulls
    # No blob lost: every one is served, whole, with one volume server, origin, edge down.
    with httpx.Client(timeout=30) as http:
        for cid in warm + cold:
            answer = http.get(f"{fleet.pop}/blob/{user.did}/{cid}")
            assert answer.status_code == 200 and compute(answer.content) == cid

    # Every node started again: the fleet heals with no operator.
    fleet.origins[0].start()
    fleet.cluster.volumes[0].start()
    fleet.restart_edge("e1")
    fleet.wait_healthy()
    with httpx.Client(timeout=30) as http:
        for node in fleet.edges.values():
            for cid in warm[:4] + cold[-4:]:
                answer = http.get(f"{node.url}/blob/{user.did}/{cid}")
                assert answer.status_code == 200 and compute(answer.content) == cid
        for origin in fleet.origins:
            for cid in warm[:4] + cold[-4:]:
                assert http.get(f"{origin.url}/blob/{cid}",
                                params={"did": user.did}).status_code == 200
        # HAProxy gives the edge back its share once its checks pass.
        deadline = time.monotonic() + 10
        answered: set[str] = set()
        while answered != {"e1", "e2", "e3"} and time.monotonic() < deadline:
            answered |= {http.get(f"{fleet.pop}/blob/{user.did}/{cid}").headers.get(
                "x-atcdn-edge", "") for cid in warm + cold}
            time.sleep(0.3)
        assert answered == {"e1", "e2", "e3"}


def test_the_fleet_is_separate_processes(fleet: Fleet, tmp_path: Path) -> None:
    pids = [p.proc.pid for p in fleet.cluster.parts() if p.proc]
    pids += [o.proc.pid for o in fleet.origins if o.proc]
    pids += [e.proc.pid for e in fleet.edges.values()]
    assert len(set(pids)) == 6 + 2 + 3
