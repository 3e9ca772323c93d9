"""The edge's disk tier under a working set ten times its budget: which eviction policy,
and does eviction slow a hit?

    python bench/cache_policy.py [--objects 6000 --requests 60000] [--json out.json]

1. Hit ratio: Zipf(1.0) traces (plain, with 30% one-hit wonders, with churn: see
   bench/traces.py) replayed through the real ``DiskTier`` (diskcache on disk) with each
   of diskcache's policies, driven as the edge drives it (get; on a miss put, then get),
   next to the same policy simulated in memory.
2. Hit latency while the tier is full and evicting: one process times ``get`` of present
   entries while another process (a second worker) stores new ones at a bounded rate,
   with diskcache culling inside ``set`` (cull_limit=10) and with the background
   ``Culler`` (cull_limit=0); the writer times its ``set`` calls too (a set runs on a
   worker's event loop, so its time is time no request of that worker is served).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atcdn.edge.cache import DiskTier  # noqa: E402

from bench.traces import POLICIES, churn, simulate, sizes_for, with_scan, zipf  # noqa: E402

MIN_FILE = 1 << 20  # the edge's default memory_max_item: smaller values live in SQLite
FILLER = bytes(range(256)) * 4096  # 1 MB of body to slice from


def traces(objects: int, requests: int) -> dict[str, list[int]]:
    return {"zipf": zipf(objects, requests),
            "zipf + 30% one-hit wonders": with_scan(zipf(objects, requests), 0.3,
                                                    first_id=objects),
            "churn": churn(objects // 2, requests, step=objects // 20, epochs=10),
            "churn, 4x longer": churn(objects // 2, 4 * requests, step=objects // 20,
                                      epochs=40)}


def replay(tier: DiskTier, trace: list[int], sizes: list[int]) -> tuple[int, int, int, int]:
    """(hits, requests, hit bytes, bytes) through the real tier, as edge/sources.py does."""
    hits = hit_bytes = total = 0
    for i in trace:
        key, size = f"s/{i}", sizes[i]
        total += size
        if tier.get(key) is not None:
            hits += 1
            hit_bytes += size
            continue
        tier.put_bytes(key, FILLER[:size], f"cid{i}")
        tier.get(key)
    return hits, len(trace), hit_bytes, total


def ratios(work: Path, objects: int, requests: int, only: list[str],
           policies: list[str]) -> list[dict]:
    sizes = sizes_for(objects + requests, low=1024, high=64 * 1024)
    budget = sum(sizes[:objects]) // 10
    rows = []
    for name, trace in traces(objects, requests).items():
        if only and name not in only:
            continue
        for policy in policies:
            tier = DiskTier(work / f"{len(rows)}-{policy}", budget, MIN_FILE, policy=policy)
            started = time.monotonic()
            hits, n, hit_bytes, total = replay(tier, trace, sizes)
            seconds = time.monotonic() - started
            volume = tier.cache.volume()
            tier.close()
            model = simulate(trace, sizes, budget, policy)
            rows.append({"trace": name, "policy": policy, "hit_ratio": hits / n,
                         "byte_hit_ratio": hit_bytes / total,
                         "simulated_hit_ratio": model.hit_ratio,
                         "simulated_byte_hit_ratio": model.byte_hit_ratio,
                         "budget": budget, "volume_after": volume, "seconds": seconds})
            print(f"{name:28} {policy:22} hit {hits / n:.3f} bytes {hit_bytes / total:.3f}"
                  f"  (model {model.hit_ratio:.3f} / {model.byte_hit_ratio:.3f})"
                  f"  {seconds:.1f} s", flush=True)
    return rows


def writer(directory: str, budget: int, policy: str, background: bool, seconds: float,
           rate: float, size: int, out: multiprocessing.Queue) -> None:
    """A second worker storing new ``size``-byte entries at ``rate`` per second; its
    set times."""
    tier = DiskTier(Path(directory), budget, MIN_FILE, policy=policy,
                    background_cull=background)
    times: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        tier.put_bytes(f"new/{i}", FILLER[:size], f"new{i}")
        times.append(time.perf_counter() - started)
        i += 1
        time.sleep(max(0.0, 1 / rate - times[-1]))
    time.sleep(0.5)  # let the culler catch up before the volume is read
    out.put((times, tier.culler.evicted if tier.culler else None, tier.cache.volume()))
    tier.close()


def timed_gets(tier: DiskTier, keys: list[str], seconds: float) -> list[float]:
    """Lookup times of ``keys`` (hits, or misses once the writer evicted them: FIFO)."""
    times = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        started = time.perf_counter()
        tier.get(keys[i % len(keys)])
        times.append(time.perf_counter() - started)
        i += 1
        time.sleep(0.0005)  # a bounded read rate, not a spin
    return times


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"count": len(times), "p50_ms": 1000 * statistics.median(ordered),
            "p90_ms": 1000 * ordered[int(0.90 * (len(ordered) - 1))],
            "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": 1000 * ordered[-1]}


def latency(work: Path, policy: str, seconds: float, rate: float, size: int) -> list[dict]:
    rows = []
    for background in (False, True):
        directory = work / f"lat-{policy}-{'bg' if background else 'inline'}"
        budget = 128 * size
        tier = DiskTier(directory, budget, MIN_FILE, policy=policy,
                        background_cull=background)
        for i in range(150):  # fill past the budget: every further set evicts
            tier.put_bytes(f"fill/{i}", FILLER[:size], f"fill{i}")
        hot = [f"hot/{i}" for i in range(50)]
        for i, key in enumerate(hot):
            tier.put_bytes(key, FILLER[: 32 * 1024], f"hot{i}")
        quiet = summary(timed_gets(tier, hot, 2.0))
        out: multiprocessing.Queue = multiprocessing.Queue()
        proc = multiprocessing.Process(target=writer, args=(str(directory), budget, policy,
                                                            background, seconds, rate, size,
                                                            out))
        proc.start()
        busy = summary(timed_gets(tier, hot, seconds))
        sets, evicted, volume = out.get(timeout=seconds + 60)
        proc.join(timeout=30)
        tier.close()
        row = {"policy": policy, "cull": "background" if background else "inside set",
               "get_quiet": quiet, "get_while_evicting": busy, "set": summary(sets),
               "evicted_by_culler": evicted, "budget": budget, "volume_after": volume}
        rows.append(row)
        print(f"{size // 1024} KB {policy:22} cull {row['cull']:10}  get p50/p90/p99/max quiet"
              f" {_ms(quiet)}, evicting {_ms(busy)}; set {_ms(row['set'])};"
              f" volume {volume / budget:.2f}x budget", flush=True)
    return rows


def _ms(s: dict) -> str:
    return f"{s['p50_ms']:.2f}/{s['p90_ms']:.2f}/{s['p99_ms']:.2f}/{s['max_ms']:.1f} ms"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=6000)
    parser.add_argument("--requests", type=int, default=60000)
    parser.add_argument("--seconds", type=float, default=6.0, help="each latency phase")
    parser.add_argument("--rate", type=float, default=100.0, help="writer sets per second")
    parser.add_argument("--sizes-kb", type=int, nargs="+", default=[32, 256],
                        help="entry sizes of the latency phases (under 1 MB: in SQLite)")
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--traces", nargs="+", default=[], help="only these traces (by name)")
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="atcdn-cachepolicy-") as tmp:
        work = Path(tmp)
        result = {"ratios": [] if args.skip_ratios else ratios(work, args.objects, args.requests,
                                                               args.traces, args.policies),
                  "latency": [] if args.skip_latency else [
                      row for size in args.sizes_kb for policy in POLICIES
                      for row in latency(work, policy, args.seconds, args.rate, size * 1024)]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
