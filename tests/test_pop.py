"""A PoP: Debian's HAProxy, configured by the Ansible role's template, in front of three
real edges over one real origin. Consistent hashing on the CID puts each blob on one edge;
killing an edge under load moves only its share, costs no client error, and its share
comes back when it does."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
from atcdn.core.cid import compute
from PIL import Image

from tests.helpers.env import TOKEN, need_tool
from tests.helpers.nodes import Edge, running_origin, start_edge
from tests.helpers.pictures import DID
from tests.helpers.pop import render_config
from tests.helpers.servers import Process, free_port

BLOBS = 90


def tiny_png(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, i // 256, 7)).save(out, "PNG")
    return out.getvalue()


def test_pop_hashes_blobs_to_one_edge_and_fails_over(tmp_path: Path) -> None:
    haproxy = need_tool("haproxy")
    with running_origin(tmp_path) as origin:
        cids = []
        with httpx.Client() as http:
            for i in range(BLOBS):
                data = tiny_png(i)
                cids.append(compute(data))
                r = http.put(f"{origin.url}/blob/{cids[-1]}", params={"did": DID}, content=data,
                             headers={"authorization": f"Bearer {TOKEN}"})
                assert r.status_code in (200, 201)
        edges: dict[str, Edge] = {}
        try:
            for name in ("e1", "e2", "e3"):
                edges[name] = start_edge(origin.url, tmp_path / name, tmp_path / f"{name}.log",
                                         env={"ATCDN_PDS_FALLBACK": "0"})
            port = free_port()
            config = tmp_path / "haproxy.cfg"
            render_config(config, port, {n: e.url for n, e in edges.items()})
            check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
            proc = Process([haproxy, "-W", "-db", "-f", str(config)], log=tmp_path / "haproxy.log")
            pop = f"http://127.0.0.1:{port}"
            try:
                _wait_all_up(pop, cids[0])
                run_scenario(pop, cids, edges, tmp_path)
            finally:
                proc.stop()
        finally:
            for edge in edges.values():
                edge.proc.stop()


def _wait_all_up(pop: str, cid: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{pop}/blob/{DID}/{cid}").status_code == 200:
                time.sleep(1.0)  # every server's first checks pass
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("HAProxy never answered")


def homes(pop: str, cids: list[str], path: str = "/img/avatar_thumbnail/plain/{did}/{cid}@webp"
          ) -> dict[str, str]:
    """Which edge answered each CID (the X-Atcdn-Edge header HAProxy adds)."""
    out = {}
    with httpx.Client(timeout=30) as http:
        for cid in cids:
            r = http.get(pop + path.format(did=DID, cid=cid))
            assert r.status_code == 200, r.text
            out[cid] = r.headers["x-atcdn-edge"]
    return out


def run_scenario(pop: str, cids: list[str], edges: dict[str, Edge], tmp: Path) -> None:
    first = homes(pop, cids)
    share = Counter(first.values())
    assert set(share) == {"e1", "e2", "e3"} and min(share.values()) >= BLOBS // 10, share
    # Every rendition of a blob, and the raw blob, go to the same edge.
    assert homes(pop, cids, "/blob/{did}/{cid}") == first
    assert homes(pop, cids, "/img/feed_thumbnail/plain/{did}/{cid}@jpeg") == first
    # So each blob was fetched from the origin exactly once across the PoP.
    assert sum(e.metric("atcdn_edge_origin_fetches_total") for e in edges.values()) == BLOBS

    victim = "e2"
    moved = [c for c in cids if first[c] == victim]
    stayed = [c for c in cids if first[c] != victim]
    errors: Counter = Counter()
    recovered: list[float] = []

    async def load(seconds: float, killed_at: list[float]) -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=10) as http:
            async def client(n: int) -> None:
                i = n
                while time.monotonic() < deadline:
                    cid = cids[i % len(cids)]
                    i += 7
                    try:
                        r = await http.get(f"{pop}/blob/{DID}/{cid}")
                        if r.status_code != 200:
                            errors[r.status_code] += 1
                        elif killed_at and not recovered and cid in moved:
                            recovered.append(time.monotonic() - killed_at[0])
                    except httpx.HTTPError as exc:
                        errors[type(exc).__name__] += 1
            await asyncio.gather(*(client(n) for n in range(8)))

    async def kill_during_load() -> None:
        killed_at: list[float] = []
        task = asyncio.create_task(load(6.0, killed_at))
        await asyncio.sleep(1.5)
        edges[victim].proc.stop(signal.SIGKILL)
        killed_at.append(time.monotonic())
        await task

    asyncio.run(kill_during_load())
    assert not errors, errors  # HAProxy retried the requests in flight on the next edge
    assert recovered and recovered[0] <= 2.0, recovered  # goal: <= 2 s behind HAProxy
    after = homes(pop, cids)
    assert all(after[c] == first[c] for c in stayed)  # only the dead edge's share moved
    assert all(after[c] != victim for c in moved)

    # The edge comes back on its address, with its cache: its share comes back to it.
    origin_url = edges["e1"].proc.argv[edges["e1"].proc.argv.index("--origin") + 1]
    old_port = int(edges[victim].url.rsplit(":", 1)[1])
    fetched_before = {n: e.metric("atcdn_edge_origin_fetches_total")
                      for n, e in edges.items() if n != victim}
    edges[victim] = start_edge(origin_url, tmp / victim, tmp / f"{victim}.back.log",
                               env={"ATCDN_PDS_FALLBACK": "0"}, port=old_port)
    deadline = time.monotonic() + 10
    while homes(pop, moved[:1])[moved[0]] != victim and time.monotonic() < deadline:
        time.sleep(0.3)
    assert homes(pop, cids) == first
    # It served its share from its own disk cache: no new origin fetch anywhere.
    assert edges[victim].metric("atcdn_edge_origin_fetches_total") == 0
    assert {n: e.metric("atcdn_edge_origin_fetches_total")
            for n, e in edges.items() if n != victim} == fetched_before
