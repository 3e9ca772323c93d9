"""The fleet, measured: a PoP of three real edges behind Debian's HAProxy over one origin.

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

More sections (hug of death, failover times) plug in the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diskcache  # noqa: E402
import httpx  # noqa: E402
import jinja2  # noqa: E402
from atcdn.core.cid import compute  # noqa: E402
from atcdn.edge.cache import EVICTION_POLICY  # noqa: E402

from bench.traces import simulate, sizes_for, zipf  # noqa: E402
from tests.helpers.env import TOKEN  # noqa: E402
from tests.helpers.nodes import Edge, Origin, start_edge  # noqa: E402
from tests.helpers.servers import Process, free_port  # noqa: E402

DID = "did:plc:" + "f" * 24
TEMPLATE = ROOT / "ansible" / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2"
HASHED = "    balance hash var(txn.blob)\n    hash-type consistent\n"
EDGES = ("e1", "e2", "e3")


# -- the fleet's parts ---------------------------------------------------------------------

@contextmanager
def origin(work: Path) -> Iterator[Origin]:
    node = Origin(work / "origin", {"ATCDN_LOG_ACCESS": "0"}, work / "origin.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def haproxy_config(port: int, edges: dict[str, str], balance: str) -> str:
    """The Ansible role's template, rendered; ``balance`` "hash" keeps it as shipped,
    "roundrobin" swaps its consistent hashing for round-robin."""
    template = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined)
    text = template.render(
        haproxy_bind=f"127.0.0.1:{port}", haproxy_check_interval="1s", haproxy_maxconn=2000,
        haproxy_edges=[{"name": n, "address": u.split("://")[1]} for n, u in edges.items()])
    if balance == "roundrobin":
        if HASHED not in text:
            raise RuntimeError("the HAProxy template no longer balances as this bench expects")
        text = text.replace(HASHED, "    balance roundrobin\n")
    return text


@dataclass
class Pop:
    url: str
    edges: dict[str, Edge]


@contextmanager
def pop(work: Path, origin_url: str, balance: str, edge_env: dict[str, str]) -> Iterator[Pop]:
    """Three fresh edges (own cache directories) behind HAProxy; all stopped after."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    work.mkdir(parents=True, exist_ok=True)
    edges: dict[str, Edge] = {}
    proc: Process | None = None
    try:
        for name in EDGES:
            edges[name] = start_edge(origin_url, work / name, work / f"{name}.log",
                                     env={"ATCDN_EDGE_PDS_FALLBACK": "0", **edge_env})
        port = free_port()
        config = work / "haproxy.cfg"
        config.write_text(haproxy_config(port, {n: e.url for n, e in edges.items()}, balance))
        check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True,
                               check=False)
        if check.returncode != 0:
            raise RuntimeError(check.stdout + check.stderr)
        proc = Process([haproxy, "-W", "-db", "-f", str(config)], log=work / "haproxy.log")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:  # every edge's first health checks must pass before load starts
            try:
                stats = httpx.get(url + "/health/live", timeout=2)
                if stats.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("HAProxy never answered")
            time.sleep(0.2)
        time.sleep(2.5)  # rise 2 at 1 s: all three edges up
        yield Pop(url, edges)
    finally:
        if proc is not None:
            proc.stop()
        for edge in edges.values():
            edge.proc.stop()


# -- load ------------------------------------------------------------------------------------

async def push(origin_url: str, bodies: dict[str, bytes], concurrency: int = 16) -> None:
    items = iter(bodies.items())
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {TOKEN}"}) as http:
        async def worker() -> None:
            for cid, body in items:
                r = await http.put(f"{origin_url}/blob/{cid}", params={"did": DID}, content=body)
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


SECTIONS: dict[str, Callable[[argparse.Namespace, Path], dict]] = {"pop-cache": pop_cache}


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
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="atcdn-fleet-"))
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "cpus": os.cpu_count()}
    try:
        for name in args.sections:
            results[name] = SECTIONS[name](args, work / name)
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
