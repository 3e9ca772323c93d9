"""The fleet, measured: three real edges behind Debian's HAProxy over real origins.

    python bench/fleet.py                          # every section
    python bench/fleet.py --sections pop-cache     # one section
    python bench/fleet.py --sections pop-cache --requests 20000 --json fleet.json

Sections (``SECTIONS``; each takes the parsed arguments and a work directory, returns a
dict of numbers, and starts and stops what it needs):

- ``pop-cache``: cache efficiency of the PoP on a Zipf(1.0) workload over 100,000 objects
  (1-4 KB, pushed to one filesystem origin), balanced by consistent hashing on the CID
  (the Ansible role's HAProxy configuration) and by round-robin, each with fresh edges
  whose disk budgets are small: bytes stored across the PoP against the unique bytes, and
  the hit ratio against one ideal cache of the PoP's size with the same policy
  (bench/traces.py). Goals (issue 11): hashing stores <= 1.1x the unique bytes and
  reaches >= 0.95x the ideal cache's hit ratio.

- ``hug``: a hug of death on new blobs only the reference PDS (tests/pds) holds: two
  origins with the shield on (``ATCDN_ORIGIN_PDS_PULL=1``), three edges with no PDS access
  given both origins, behind HAProxy. ``--hug-clients`` clients at once, each asking
  ``--hug-rounds`` times, first through HAProxy, then spread straight over the three edges
  (every edge misses: the worst case), each on ``--hug-blobs`` blobs of its own: origin
  egress (its ``atcdn_origin_bytes_out_total``: blob bodies, plus the edges' health
  checks) per client byte, and per blob byte (copies of each blob sent), getBlobs the PDS served
  per blob (goal: exactly 1), errors.
- ``failover``: kill -9 under the load of 8 clients, ``--failover-reps`` times each: an
  edge of the PoP behind HAProxy (goal <= 2 s) and an origin behind an edge given two
  origins, asked for cold blobs (goal <= 5 s). Measured from the death (the process
  reaped) to the first 200 for a request the dead node would have served; median, max,
  errors, and how long the node took to get its share back once restarted.

Every section is bounded (minutes) and stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diskcache  # noqa: E402
import httpx  # noqa: E402
from atcdn.core.cid import compute  # noqa: E402
from atcdn.core.ring import Ring  # noqa: E402
from atcdn.edge.cache import EVICTION_POLICY  # noqa: E402

from bench.traces import simulate, sizes_for, zipf  # noqa: E402
from tests.helpers.env import TOKEN  # noqa: E402
from tests.helpers.nodes import Edge, Origin, metric, start_edge  # noqa: E402
from tests.helpers.pds import reference_pds  # noqa: E402
from tests.helpers.pictures import photo  # noqa: E402
from tests.helpers.pop import running_haproxy  # noqa: E402

DID = "did:plc:" + "f" * 24
EDGES = ("e1", "e2", "e3")


# -- the fleet's parts ---------------------------------------------------------------------

@contextmanager
def origin(work: Path, env: dict[str, str] | None = None, name: str = "origin"
           ) -> Iterator[Origin]:
    node = Origin(work / name, {"ATCDN_LOG_ACCESS": "0", **(env or {})}, work / f"{name}.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@dataclass
class Pop:
    url: str
    edges: dict[str, Edge]
    start: Callable[[str, int | None], Edge]

    def restart(self, name: str) -> Edge:
        """Start edge ``name`` again on its address, with its cache directory."""
        self.edges[name] = self.start(name, int(self.edges[name].url.rsplit(":", 1)[1]))
        return self.edges[name]


@contextmanager
def pop(work: Path, origin_url: str | list[str], balance: str, edge_env: dict[str, str]
        ) -> Iterator[Pop]:
    """Three fresh edges (own cache directories, no PDS access, given every origin of
    ``origin_url``) behind HAProxy; all stopped after."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    work.mkdir(parents=True, exist_ok=True)
    edges: dict[str, Edge] = {}

    def start(name: str, port: int | None = None) -> Edge:
        return start_edge(origin_url, work / name, work / f"{name}.log", port=port,
                          env={"ATCDN_PDS_FALLBACK": "0", **edge_env})

    try:
        for name in EDGES:
            edges[name] = start(name)
        with running_haproxy(haproxy, {n: e.url for n, e in edges.items()}, work,
                             check_interval="1s", balance=balance) as url:
            deadline = time.monotonic() + 20
            while True:  # every edge's first health checks must pass before load starts
                try:
                    if httpx.get(url + "/health/live", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("HAProxy never answered")
                time.sleep(0.2)
            time.sleep(2.5)  # rise 2 at 1 s: all three edges up
            yield Pop(url, edges, start)
    finally:
        for edge in edges.values():
            edge.proc.stop()


# -- load ------------------------------------------------------------------------------------

async def push(origin_url: str, bodies: dict[str, bytes], concurrency: int = 16) -> None:
    items = iter(bodies.items())
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        async def worker() -> None:
            for cid, body in items:
                try:
                    r = await http.put(f"{origin_url}/blob/{cid}", params={"did": DID},
                                       content=body)
                except httpx.TransportError:  # a kept-alive connection closed: once more
                    r = await http.put(f"{origin_url}/blob/{cid}", params={"did": DID},
                                       content=body)
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"push {cid}: {r.status_code} {r.text}")
        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def replay(url: str, cids: list[str], sizes: list[int], trace: list[int], *,
                 concurrency: int, seconds: float) -> tuple[int, dict[str, int]]:
    """GET every request of ``trace`` in order (``concurrency`` at a time) until done or
    ``seconds`` pass; (requests done, answers that were not the right 200 by kind)."""
    position = 0
    bad: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        async def worker() -> None:
            nonlocal position
            while position < len(trace) and time.monotonic() < deadline:
                i = trace[position]
                position += 1
                try:
                    r = await http.get(f"{url}/blob/{DID}/{cids[i]}")
                    if r.status_code != 200 or len(r.content) != sizes[i]:
                        bad[str(r.status_code)] = bad.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    bad[type(exc).__name__] = bad.get(type(exc).__name__, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return position, bad


def stored(cache_dir: Path) -> set[str]:
    """The CIDs whose source an edge's disk tier holds (read after the edge stopped)."""
    cache = diskcache.Cache(str(cache_dir / "disk"))
    try:
        return {key.split("/", 1)[1] for key in cache.iterkeys() if key.startswith("src/")}
    finally:
        cache.close()


# -- sections --------------------------------------------------------------------------------

def pop_cache(args: argparse.Namespace, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    objects, requests = args.objects, args.requests
    trace = zipf(objects, requests, seed=args.seed)
    sizes = sizes_for(objects, low=1024, high=4096, seed=args.seed)
    wanted = sorted(set(trace))
    rng = random.Random(args.seed)
    bodies = {}
    cids = [""] * objects
    for i in wanted:  # only objects the trace asks for need to exist
        body = rng.randbytes(sizes[i])
        cids[i] = compute(body)
        bodies[cids[i]] = body
    size_of = {cids[i]: sizes[i] for i in wanted}
    result: dict = {"objects": objects, "requests": requests, "distinct_requested": len(wanted),
                    "distinct_bytes": sum(sizes[i] for i in wanted),
                    "edge_budget": args.edge_budget, "policy": EVICTION_POLICY, "modes": {}}
    print(f"pop-cache: {requests:,} requests, Zipf(1.0) over {objects:,} objects; "
          f"{len(wanted):,} distinct ({result['distinct_bytes'] / 1e6:.1f} MB); "
          f"edge budget {args.edge_budget / 1e6:.1f} MB", flush=True)
    with origin(work) as node:
        started = time.monotonic()
        asyncio.run(push(node.url, bodies))
        result["push_seconds"] = time.monotonic() - started
        print(f"  pushed {len(bodies):,} blobs in {result['push_seconds']:.0f} s", flush=True)
        edge_env = {"ATCDN_EDGE_CACHE_SIZE": str(args.edge_budget),
                    "ATCDN_EDGE_MEMORY_CACHE_SIZE": "1",  # the disk tier is what is measured
                    "ATCDN_LOG_ACCESS": "0"}
        for balance in ("hash", "roundrobin"):
            run = work / balance
            with pop(run, node.url, balance, edge_env) as p:
                started = time.monotonic()
                done, bad = asyncio.run(replay(p.url, cids, sizes, trace,
                                               concurrency=args.concurrency,
                                               seconds=args.max_seconds))
                seconds = time.monotonic() - started
                hits = sum(e.metric("atcdn_edge_cache_hits_total") for e in p.edges.values())
                misses = sum(e.metric("atcdn_edge_cache_misses_total") for e in p.edges.values())
                fetches = sum(e.metric("atcdn_edge_origin_fetches_total")
                              for e in p.edges.values())
            held = {name: stored(run / name) for name in EDGES}
            union = set().union(*held.values())
            stored_bytes = sum(size_of[c] for cids_held in held.values() for c in cids_held)
            unique_bytes = sum(size_of[c] for c in union)
            result["modes"][balance] = {
                "requests_done": done, "seconds": seconds, "errors": bad,
                "hits": hits, "misses": misses, "origin_fetches": fetches,
                "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
                "stored_bytes": stored_bytes, "unique_bytes": unique_bytes,
                "stored_over_unique": stored_bytes / unique_bytes if unique_bytes else 0.0,
                "per_edge_objects": {n: len(h) for n, h in held.items()}}
            m = result["modes"][balance]
            print(f"  {balance:10} {done:,} requests in {seconds:.0f} s, errors {bad or 0}; hit "
                  f"ratio {m['hit_ratio']:.3f}; stored {stored_bytes / 1e6:.2f} MB for "
                  f"{unique_bytes / 1e6:.2f} MB unique ({m['stored_over_unique']:.2f}x); "
                  f"objects per edge {m['per_edge_objects']}", flush=True)
    # One ideal cache holding what the PoP holds, replaying what each mode replayed: the
    # object bytes the hashed PoP's full caches held (SQLite's own overhead is inside the
    # edges' budgets), and the nominal sum of the budgets.
    effective = result["modes"]["hash"]["stored_bytes"]
    result["ideal_capacity"] = {"effective": effective, "nominal": 3 * args.edge_budget}
    for balance, m in result["modes"].items():
        for name, capacity in result["ideal_capacity"].items():
            tally = simulate(trace[:m["requests_done"]], sizes, capacity, EVICTION_POLICY)
            m[f"ideal_{name}_hit_ratio"] = tally.hit_ratio
        m["vs_ideal"] = m["hit_ratio"] / m["ideal_effective_hit_ratio"]
        print(f"  {balance:10} {m['vs_ideal']:.2f}x the hit ratio of one ideal cache of "
              f"{effective / 1e6:.2f} MB ({m['ideal_effective_hit_ratio']:.3f}; of "
              f"{3 * args.edge_budget / 1e6:.1f} MB: {m['ideal_nominal_hit_ratio']:.3f}), "
              f"{m['stored_over_unique']:.2f}x the unique bytes stored", flush=True)
    hashed = result["modes"]["hash"]
    result["goals"] = {"stored_le_1.1x_unique": hashed["stored_over_unique"] <= 1.1,
                       "hit_ratio_ge_0.95x_ideal": hashed["vs_ideal"] >= 0.95}
    return result


def hug(args: argparse.Namespace, work: Path) -> dict:
    """A hug of death on new blobs that only the reference PDS holds: the fleet's origins
    pull (the shield), the edges have no PDS access. Through HAProxy, then straight at
    the three edges (the worst case: every edge misses), each on blobs of its own."""
    work.mkdir(parents=True, exist_ok=True)
    blobs, clients = args.hug_blobs, args.hug_clients
    result: dict = {"blobs_per_mode": blobs, "clients": clients, "rounds": args.hug_rounds,
                    "origins": 2, "modes": {}}
    print(f"hug: {clients} concurrent clients x {args.hug_rounds} requests over {blobs} new "
          "blobs per mode; reference PDS, two shielded origins, three edges", flush=True)
    (work / "pds").mkdir()
    with reference_pds(work / "pds") as pds:
        author = pds.create_account("hug.test")
        posted = {mode: author.post_images(*(photo(1024, 768, seed=100 + 10 * m + i)
                                             for i in range(blobs)))[1]
                  for m, mode in enumerate(("haproxy", "edges"))}
        shield = {"ATCDN_ORIGIN_PDS_PULL": "1", "ATCDN_PLC_URL": pds.plc_url,
                  "ATCDN_ALLOW_PRIVATE_NETWORKS": "1",
                  "ATCDN_ORIGIN_WORKERS": str(args.origin_workers)}
        with origin(work, shield, "o1") as o1, origin(work, shield, "o2") as o2, \
                pop(work / "pop", [o1.url, o2.url], "hash", {"ATCDN_LOG_ACCESS": "0"}) as p:
            for mode, cids in posted.items():
                urls = [p.url] if mode == "haproxy" else [e.url for e in p.edges.values()]
                before = sum(metric(o.url, "atcdn_origin_bytes_out_total") for o in (o1, o2))
                started = time.monotonic()
                got, bad = asyncio.run(herd(urls, author.did, cids, clients, args.hug_rounds))
                seconds = time.monotonic() - started
                egress = sum(metric(o.url, "atcdn_origin_bytes_out_total")
                             for o in (o1, o2)) - before
                log = pds.get_blob_log()
                per_blob = [sum(1 for line in log if line["cid"] == cid) for cid in cids]
                unique = sum(got["unique"].values())
                m = {"requests": clients * args.hug_rounds, "seconds": seconds, "errors": bad,
                     "client_bytes": got["bytes"], "origin_egress_bytes": egress,
                     "unique_bytes": unique,
                     "origin_egress_per_client_byte": egress / got["bytes"] if got["bytes"]
                     else 0.0, "origin_copies_per_blob": egress / unique if unique else 0.0,
                     "pds_getblobs_per_blob": per_blob}
                result["modes"][mode] = m
                print(f"  {mode:8} {m['requests']} requests in {seconds:.1f} s, errors "
                      f"{bad or 0}; client {got['bytes'] / 1e6:.1f} MB, origin egress "
                      f"{egress / 1e6:.2f} MB ({m['origin_egress_per_client_byte']:.4f} per "
                      f"client byte, {m['origin_copies_per_blob']:.2f} copies per blob); "
                      f"PDS getBlobs per blob {per_blob}", flush=True)
    result["goals"] = {"one_getblob_per_blob": all(
        m["pds_getblobs_per_blob"] == [1] * blobs for m in result["modes"].values()),
        "no_errors": not any(m["errors"] for m in result["modes"].values())}
    return result


async def herd(urls: list[str], did: str, cids: list[str], clients: int, rounds: int
               ) -> tuple[dict, dict[str, int]]:
    """``clients`` at once, each GETting ``rounds`` blobs from one of ``urls`` (every URL
    is asked for every blob);
    (bytes received and each CID's size, answers that were not a 200 by kind)."""
    bad: dict[str, int] = {}
    got: dict = {"bytes": 0, "unique": {}}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        async def client(n: int) -> None:
            for r_ in range(rounds):
                cid = cids[(n + r_) % len(cids)]
                try:
                    url = urls[(n // len(cids)) % len(urls)]
                    r = await http.get(f"{url}/blob/{did}/{cid}")
                    if r.status_code != 200 or compute(r.content) != cid:
                        bad[str(r.status_code)] = bad.get(str(r.status_code), 0) + 1
                        continue
                    got["bytes"] += len(r.content)
                    got["unique"][cid] = len(r.content)
                except httpx.HTTPError as exc:
                    bad[type(exc).__name__] = bad.get(type(exc).__name__, 0) + 1
        await asyncio.gather(*(client(n) for n in range(clients)))
    return got, bad


async def until_served(target: Callable[[int], tuple[str, bool] | None], kill: Callable[[], None],
                       *, kill_after: float, seconds: float, concurrency: int = 8
                       ) -> tuple[float | None, dict[str, int], int]:
    """``concurrency`` clients GET ``target(i)`` for i = 0, 1, ... (a URL, and whether the
    node to be killed would have served it; None: no more); ``kill`` runs ``kill_after``
    seconds in. Stops at the first 200 after the kill of a URL the dead node would have
    served, or after ``seconds``: (seconds from its death to that 200, errors, requests)."""
    bad: dict[str, int] = {}
    state: dict = {"i": 0, "killed": None, "first": None}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as http:
        async def client() -> None:
            while time.monotonic() < deadline and state["first"] is None:
                job = target(state["i"])
                state["i"] += 1
                if job is None:
                    return
                url, its = job
                try:
                    r = await http.get(url)
                    if r.status_code != 200:
                        bad[str(r.status_code)] = bad.get(str(r.status_code), 0) + 1
                    elif its and state["killed"] is not None and state["first"] is None:
                        state["first"] = time.monotonic() - state["killed"]
                except httpx.HTTPError as exc:
                    bad[type(exc).__name__] = bad.get(type(exc).__name__, 0) + 1

        async def killer() -> None:
            await asyncio.sleep(kill_after)
            await asyncio.to_thread(kill)  # SIGKILL, then reaped: dead from here on
            state["killed"] = time.monotonic()
        await asyncio.gather(killer(), *(client() for _ in range(concurrency)))
    return state["first"], bad, state["i"]


def answered_by(url: str, cids: list[str]) -> dict[str, str]:
    """Which edge of a PoP answered each CID (the X-Atcdn-Edge header HAProxy adds)."""
    with httpx.Client(timeout=30) as http:
        return {cid: http.get(f"{url}/blob/{DID}/{cid}").headers.get("x-atcdn-edge", "")
                for cid in cids}


def waited(check: Callable[[], bool], timeout: float = 20.0) -> float:
    """Poll ``check`` until true; the seconds it took (TimeoutError beyond ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError("the fleet did not heal")
        time.sleep(0.2)
    return time.monotonic() - started


def spread(times: list[float | None]) -> dict:
    seen = [t for t in times if t is not None]
    return {"seconds": times, "median": statistics.median(seen) if seen else None,
            "max": max(seen) if len(seen) == len(times) else None}


def failover(args: argparse.Namespace, work: Path) -> dict:
    """kill -9 of a node under load, ``--failover-reps`` times each: an edge behind HAProxy
    (the PoP of ``pop``) and an origin behind an edge given two origins. Measured: from the
    node's death (reaped) to the first 200 for a request it would have served."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    quiet = {"ATCDN_LOG_ACCESS": "0"}

    def blobs(n: int) -> dict[str, bytes]:
        out = {}
        for _ in range(n):
            body = rng.randbytes(2048)
            out[compute(body)] = body
        return out

    result: dict = {"repetitions": args.failover_reps}
    print(f"failover: {args.failover_reps} kills each, 8 clients", flush=True)
    with origin(work, name="o-pop") as node:
        bodies = blobs(90)
        asyncio.run(push(node.url, bodies))
        cids = list(bodies)
        times, errors, backs = [], [], []
        with pop(work / "pop", node.url, "hash", quiet) as p:
            for rep in range(args.failover_reps):
                victim = EDGES[rep % len(EDGES)]
                home = answered_by(p.url, cids)
                share = {c for c, e in home.items() if e == victim}

                def target(i: int) -> tuple[str, bool]:
                    cid = cids[(i * 7) % len(cids)]
                    return f"{p.url}/blob/{DID}/{cid}", cid in share

                first, bad, _ = asyncio.run(until_served(
                    target, lambda: p.edges[victim].proc.stop(signal.SIGKILL),
                    kill_after=1.0, seconds=15))
                times.append(first)
                errors.append(bad)
                p.restart(victim)
                some = sorted(share)[:5]
                backs.append(waited(lambda: set(answered_by(p.url, some).values()) == {victim}))
                print(f"  edge   #{rep + 1} {victim}: first success "
                      f"{'never' if first is None else f'{first * 1000:.0f} ms'} after the "
                      f"kill, errors {bad or 0}; share back {backs[-1]:.1f} s after restart",
                      flush=True)
        result["edge_behind_haproxy"] = {**spread(times), "errors": errors,
                                         "share_back_seconds": backs}
    with origin(work, name="o1") as o1, origin(work, name="o2") as o2:
        edge = start_edge([o1.url, o2.url], work / "edge", work / "edge.log", workers=2,
                          env={"ATCDN_PDS_FALLBACK": "0", **quiet})
        ring = Ring([o1.url, o2.url])
        times, errors, backs = [], [], []
        try:
            for rep in range(args.failover_reps):
                victim = (o1, o2)[rep % 2]
                cold = blobs(args.failover_blobs)
                for o in (o1, o2):
                    asyncio.run(push(o.url, cold))
                order = list(cold)

                def cold_target(i: int) -> tuple[str, bool] | None:
                    if i >= len(order):
                        return None
                    return f"{edge.url}/blob/{DID}/{order[i]}", ring.home(order[i]) == victim.url

                first, bad, done = asyncio.run(until_served(
                    cold_target, lambda: victim.stop(signal.SIGKILL), kill_after=1.0,
                    seconds=15))
                times.append(first)
                errors.append(bad)
                victim.start()  # its address, its data

                def all_up() -> bool:
                    answer = httpx.get(edge.url + "/health", timeout=5).json()
                    return all(o.get("state") == "up" for o in answer.get("origins", []))
                backs.append(waited(all_up))
                print(f"  origin #{rep + 1}: first success "
                      f"{'never' if first is None else f'{first * 1000:.0f} ms'} after the "
                      f"kill ({done} cold requests), errors {bad or 0}; up again at the edge "
                      f"{backs[-1]:.1f} s after restart", flush=True)
        finally:
            edge.proc.stop()
        result["origin_behind_edges"] = {**spread(times), "errors": errors,
                                         "up_again_seconds": backs}
    e, o = result["edge_behind_haproxy"], result["origin_behind_edges"]
    result["goals"] = {"edge_le_2s": e["max"] is not None and e["max"] <= 2.0,
                       "origin_le_5s": o["max"] is not None and o["max"] <= 5.0}
    return result


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], dict]] = {
    "pop-cache": pop_cache, "hug": hug, "failover": failover}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    cache = parser.add_argument_group("pop-cache")
    cache.add_argument("--objects", type=int, default=100_000)
    cache.add_argument("--requests", type=int, default=20_000)
    cache.add_argument("--edge-budget", type=int, default=1 << 20, help="disk bytes per edge")
    cache.add_argument("--concurrency", type=int, default=16)
    cache.add_argument("--max-seconds", type=float, default=240.0,
                       help="bound on each balance mode's replay")
    cache.add_argument("--seed", type=int, default=11)
    crowd = parser.add_argument_group("hug")
    crowd.add_argument("--hug-clients", type=int, default=600, help="concurrent clients")
    crowd.add_argument("--hug-rounds", type=int, default=2, help="requests per client")
    crowd.add_argument("--hug-blobs", type=int, default=3, help="new blobs per mode")
    crowd.add_argument("--origin-workers", type=int, default=2)
    death = parser.add_argument_group("failover")
    death.add_argument("--failover-reps", type=int, default=3, help="kills of each kind")
    death.add_argument("--failover-blobs", type=int, default=800,
                       help="cold blobs per origin kill")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="atcdn-fleet-"))
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "cpus": os.cpu_count()}
    try:
        for name in args.sections:
            try:
                results[name] = SECTIONS[name](args, work / name)
            except Exception as exc:  # the other sections' numbers still count
                traceback.print_exc()
                results[name] = {"failed": f"{type(exc).__name__}: {exc}"}
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
