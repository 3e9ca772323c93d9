"""Edge benchmark: cache hits against nginx and Varnish, and the thundering herd.

One run, one command, from the repository root::

    python bench/edge.py                        # ~4 minutes on a 2-core box
    python bench/edge.py --runs 1 --herd 500    # a quick look

What it does, with the same bytes and the same load generator (wrk) for every peer:

1. makes a ~50 KB JPEG and a 5 MB blob, stores both in a real origin process;
2. starts real edges (uvicorn, the default, and granian for comparison) and warms their
   caches;
3. writes the exact bytes each edge URL answers into an nginx docroot under the same
   paths, so nginx (sendfile) and Varnish 7 (in front of that nginx) serve identical
   responses for identical URLs;
4. runs wrk rounds, interleaved across servers so load from elsewhere on the machine
   hits every server alike, and reports medians and ratios to nginx and Varnish;
5. the herd: a fresh edge with an empty cache gets N (2,000) identical cold requests,
   all connected first and sent at once, then its /metrics must show one origin fetch,
   one transform and no errors.

wrk runs on the same machine as the servers, so it takes a share of the cores: absolute
numbers understate every server, and only ratios measured in the same run mean much.
Results go to stdout and to bench/results/edge.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
from atcdn.core.cid import compute
from PIL import Image

from tests.helpers.herd import herd
from tests.helpers.servers import Process, atcdn, free_port

DID = "did:plc:benchbenchbenchbenchbenc"
TOKEN = "bench-token"
SMALL = 50_000
BIG = 5 * 1024 * 1024
GOAL_SMALL_RPS = 0.5  # edge 50 KB hits, req/s, as a share of nginx
GOAL_BIG_MBPS = 0.9  # edge 5 MB hits, MB/s, as a share of nginx

# wrk prints its summary through this hook as one JSON line, so nothing is scraped.
WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


# --- the objects -------------------------------------------------------------------------

def make_jpeg(target: int, size: tuple[int, int] = (400, 300), seed: int = 1) -> bytes:
    """A photo-like JPEG (smooth gradient plus noise) of about ``target`` bytes."""
    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    noise = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    image = Image.blend(base, noise, 0.25)
    low, high, best = 5, 98, b""
    while low <= high:  # binary search on quality for the size closest below target
        quality = (low + high) // 2
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality)
        if out.tell() <= target:
            best, low = out.getvalue(), quality + 1
        else:
            high = quality - 1
    return best or out.getvalue()


@dataclass(frozen=True)
class Target:
    """One URL path benchmarked on every server; ``size`` is what the edge answers."""

    name: str
    path: str
    metric: str  # "rps" or "mbps": what the goal is judged on
    size: int = 0


# --- processes -----------------------------------------------------------------------------

def start(argv: list[str], work: Path, name: str, health: str,
          env: dict[str, str] | None = None, cwd: Path = ROOT) -> Process:
    proc = Process(argv, env=env, log=work / f"{name}.log", cwd=cwd)
    try:
        proc.wait_http(health)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_origin(work: Path, port: int) -> Process:
    return start(
        atcdn("origin", "serve", "--host", "127.0.0.1", "--port", str(port),
              "--data-dir", str(work / "origin")),
        work, "origin", f"http://127.0.0.1:{port}/health", env={"ATCDN_ORIGIN_TOKEN": TOKEN})


def start_edge(work: Path, name: str, port: int, origin: str, server: str,
               python: str | None = None) -> Process:
    """An edge with 2 workers; ``python``: another interpreter whose atcdn runs (another
    checkout in its own venv, started from ``work`` so that it cannot import this one)."""
    argv = atcdn("edge", "serve", "--host", "127.0.0.1", "--port", str(port), "--origin", origin,
                 "--cache-dir", str(work / name), "--workers", "2", "--server", server)
    if python:
        argv[0] = python
    return start(argv, work, name, f"http://127.0.0.1:{port}/health",
                 env={"ATCDN_ALLOW_PRIVATE_NETWORKS": "1", "ATCDN_PDS_FALLBACK": "false",
                      "ATCDN_PLC_URL": "http://127.0.0.1:9"}, cwd=work if python else ROOT)


NGINX_CONF = """\
worker_processes 2;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    open_file_cache max=1000 inactive=60s;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location = /health {{ return 200 "ok"; }}
    }}
}}
"""


def start_nginx(work: Path, port: int, root: Path) -> Process:
    """nginx with sendfile and two workers, its own prefix, in the foreground."""
    prefix = work / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root))
    return start([shutil.which("nginx") or "nginx", "-c", str(conf), "-p", str(prefix)],
                 work, "nginx", f"http://127.0.0.1:{port}/health")


def start_varnish(work: Path, port: int, backend_port: int) -> Process:
    """Varnish 7 with its default VCL, caching the nginx above in 256 MB of RAM."""
    return start([shutil.which("varnishd") or "varnishd", "-F",
                  "-a", f"127.0.0.1:{port}", "-b", f"127.0.0.1:{backend_port}",
                  "-n", str(work / "varnish"), "-s", "malloc,256m"],
                 work, "varnish", f"http://127.0.0.1:{port}/health")


# --- load ----------------------------------------------------------------------------------

@dataclass
class WrkRun:
    requests: int
    bytes: int
    duration_us: int
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    p50_us: int
    p99_us: int

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def mbps(self) -> float:
        return self.bytes / 1e6 / (self.duration_us / 1e6)

    @property
    def errors(self) -> int:
        return self.connect + self.read + self.write + self.status + self.timeout


def wrk(url: str, *, seconds: float, connections: int, threads: int, script: Path) -> WrkRun:
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    return WrkRun(**json.loads(line.removeprefix("WRKJSON ")))


@dataclass
class Series:
    """Every measured round of one URL on one server."""

    server: str
    target: str
    runs: list[WrkRun] = field(default_factory=list)

    def median(self, metric: str) -> float:
        return statistics.median(getattr(r, metric) for r in self.runs)

    def ratio(self, peer: Series | None, metric: str) -> float | None:
        """Median over rounds of this/peer, each pair measured seconds apart, so a
        burst of load from elsewhere on the machine skews a round's pair alike."""
        if peer is None:
            return None
        return statistics.median(getattr(a, metric) / getattr(b, metric)
                                 for a, b in zip(self.runs, peer.runs))


def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {metric name: sum over its label sets}."""
    totals: dict[str, float] = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


# --- the run -------------------------------------------------------------------------------

def put_blob(origin: str, data: bytes) -> str:
    cid = compute(data)
    response = httpx.put(f"{origin}/blob/{cid}", content=data, timeout=60,
                         headers={"Authorization": f"Bearer {TOKEN}"})
    response.raise_for_status()
    return cid


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered {response.status_code}: {response.text[:300]}")
    return response.content


def raise_nofile() -> int:
    """The herd holds thousands of sockets open, in this process and in the edge's."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def bench_hits(args: argparse.Namespace, work: Path, origin: str) -> tuple[list[Target], dict]:
    """The story of the hit benchmark: objects in, servers up, same bytes, load."""
    targets = store_objects(origin, args.small_bytes)
    procs: list[Process] = []
    try:
        servers = start_edges(args, work, origin, procs)
        docroot = work / "docroot"
        bodies = copy_to_docroot(next(iter(servers.values())), targets, docroot)
        targets = [Target(t.name, t.path, t.metric, len(bodies[t.path])) for t in targets]
        servers |= start_peers(args, work, docroot, procs)
        check_same_bytes(servers, bodies)
        return targets, run_rounds(args, work, servers, targets)
    finally:
        for proc in reversed(procs):
            proc.stop()


def store_objects(origin: str, small_bytes: int) -> list[Target]:
    small = make_jpeg(small_bytes)
    big = random.Random(5).randbytes(BIG)
    small_cid, big_cid = put_blob(origin, small), put_blob(origin, big)
    return [
        Target("50 KB /img hit", f"/img/feed_thumbnail/plain/{DID}/{small_cid}@jpeg", "rps"),
        Target("50 KB /blob hit", f"/blob/{DID}/{small_cid}", "rps"),
        Target("5 MB /blob hit", f"/blob/{DID}/{big_cid}", "mbps"),
    ]


def server_spec(spec: str) -> str:
    if spec.partition("@")[0] not in ("uvicorn", "granian"):
        raise argparse.ArgumentTypeError(f"{spec}: uvicorn or granian, then @PYTHON or nothing")
    return spec


def start_edges(args: argparse.Namespace, work: Path, origin: str,
                procs: list[Process]) -> dict[str, str]:
    servers = {}
    for number, spec in enumerate(args.servers):
        server, _, python = spec.partition("@")
        port = free_port()
        procs.append(start_edge(work, f"edge-{number}-{server}", port, origin, server,
                                python or None))
        servers[f"edge ({spec})"] = f"http://127.0.0.1:{port}"
    return servers


def copy_to_docroot(edge: str, targets: list[Target], docroot: Path) -> dict[str, bytes]:
    """The peers serve exactly what the edge answers, under the same paths."""
    bodies = {}
    for target in targets:
        bodies[target.path] = fetch(edge + target.path)
        file = docroot / target.path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(bodies[target.path])
    return bodies


def start_peers(args: argparse.Namespace, work: Path, docroot: Path,
                procs: list[Process]) -> dict[str, str]:
    servers: dict[str, str] = {}
    if not args.peers:
        return servers
    nginx_port = free_port()
    procs.append(start_nginx(work, nginx_port, docroot))
    if "nginx" in args.peers:
        servers["nginx"] = f"http://127.0.0.1:{nginx_port}"
    if "varnish" in args.peers:
        port = free_port()
        procs.append(start_varnish(work, port, nginx_port))
        servers["varnish"] = f"http://127.0.0.1:{port}"
    return servers


def check_same_bytes(servers: dict[str, str], bodies: dict[str, bytes]) -> None:
    """Same bytes everywhere, or the comparison means nothing."""
    for name, base in servers.items():
        for path, expected in bodies.items():
            if fetch(base + path) != expected:
                raise RuntimeError(f"{name} answers other bytes for {path}")
            if name == "varnish":  # a hit carries two transaction ids in X-Varnish
                hit = httpx.get(base + path, timeout=60).headers.get("x-varnish", "")
                if " " not in hit:
                    raise RuntimeError(f"varnish did not cache {path} (X-Varnish: {hit})")


def run_rounds(args: argparse.Namespace, work: Path, servers: dict[str, str],
               targets: list[Target]) -> dict[tuple[str, str], Series]:
    """Warm every worker's memory and every cache, then measure round-robin."""
    script = work / "report.lua"
    script.write_text(WRK_REPORT)
    load = {"connections": args.connections, "threads": args.threads, "script": script}
    for base in servers.values():
        for target in targets:
            wrk(base + target.path, seconds=args.warmup, **load)
    series = {(s, t.name): Series(s, t.name) for s in servers for t in targets}
    for round_ in range(args.runs):
        for target in targets:
            for name, base in servers.items():
                run = wrk(base + target.path, seconds=args.duration, **load)
                series[(name, target.name)].runs.append(run)
                print(f"  round {round_ + 1} {target.name:16} {name:16} "
                      f"{run.rps:10.0f} req/s {run.mbps:9.1f} MB/s "
                      f"errors {run.errors}", flush=True)
    return series


def bench_herd(args: argparse.Namespace, work: Path, origin: str) -> dict:
    # A bigger photo, so the transform takes long enough for the herd to pile up on it.
    photo = make_jpeg(1_500_000, size=(2400, 1800), seed=7)
    cid = put_blob(origin, photo)
    port = free_port()
    path = f"/img/feed_fullsize/plain/{DID}/{cid}@jpeg"
    server, _, python = args.servers[0].partition("@")
    edge = start_edge(work, f"edge-herd-{server}", port, origin, server, python or None)
    try:
        before = scrape(f"http://127.0.0.1:{port}/metrics")
        result = asyncio.run(herd("127.0.0.1", port, path, args.herd, timeout=120))
        after = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        edge.stop()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    result["source_bytes"] = len(photo)
    result["metrics"] = {k: v for k, v in delta.items() if k.startswith("atcdn_") and v}
    result["origin_fetches"] = delta.get("atcdn_edge_origin_fetches_total", 0.0)
    result["transforms"] = delta.get("atcdn_edge_transforms_total", 0.0)
    result["edge_error_metrics"] = sum(
        v for k, v in delta.items() if "error" in k and not k.endswith("_created"))
    result["errors"] = args.herd - result["outcomes"].get("200", 0)
    result["goal_met"] = (result["origin_fetches"] == 1 and result["transforms"] == 1
                          and result["errors"] == 0 and result["edge_error_metrics"] == 0
                          and result["distinct_bodies"] == 1)
    return result


def report(args: argparse.Namespace, targets: list[Target], series: dict, herd_result: dict | None) -> dict:
    servers = list(dict.fromkeys(s for s, _ in series))
    rows = []
    print(f"\n{'object':16} {'bytes':>8} {'server':16} {'req/s':>9} {'MB/s':>8} {'x nginx':>8} "
          f"{'x varnish':>9} {'p99 ms':>7} {'errors':>6}  goal")
    for target in targets:
        nginx = series.get(("nginx", target.name))
        varnish = series.get(("varnish", target.name))
        for server in servers:
            s = series[(server, target.name)]
            vs_nginx = s.ratio(nginx, target.metric)
            vs_varnish = s.ratio(varnish, target.metric)
            goal = None
            if server.startswith("edge") and vs_nginx is not None:
                need = GOAL_SMALL_RPS if target.metric == "rps" else GOAL_BIG_MBPS
                goal = {"need_x_nginx": need, "met": vs_nginx >= need}
            row = {
                "object": target.name, "path": target.path, "bytes": target.size,
                "server": server, "judged_on": target.metric,
                "rps_median": round(s.median("rps")), "mbps_median": round(s.median("mbps"), 1),
                "x_nginx": vs_nginx and round(vs_nginx, 3),
                "x_varnish": vs_varnish and round(vs_varnish, 3),
                "p99_ms_median": round(s.median("p99_us") / 1000, 2),
                "errors": sum(r.errors for r in s.runs), "goal": goal,
                "runs": [asdict(r) for r in s.runs],
            }
            rows.append(row)
            verdict = "" if goal is None else (
                f"{'yes' if goal['met'] else 'NO'} (>= {goal['need_x_nginx']}x {target.metric})")
            print(f"{target.name:16} {target.size:8} {server:16} {row['rps_median']:9} {row['mbps_median']:8} "
                  f"{_ratio(vs_nginx):>8} {_ratio(vs_varnish):>9} {row['p99_ms_median']:7} "
                  f"{row['errors']:6}  {verdict}")
    judged = args.servers[0] if args.servers else None
    goals = {
        f"{row['object']}: edge ({judged}) >= {row['goal']['need_x_nginx']}x nginx "
        f"{'req/s' if row['judged_on'] == 'rps' else 'MB/s'}": row["goal"]["met"]
        for row in rows if row["server"] == f"edge ({judged})" and row["goal"]
    }
    if herd_result:
        goals[f"herd of {herd_result['requests']}: 1 origin fetch, 1 transform, 0 errors"] = (
            herd_result["goal_met"])
    if herd_result:
        h = herd_result
        print(f"\nherd: {h['requests']} identical cold requests in flight at once -> "
              f"origin fetches {h['origin_fetches']:g}, transforms {h['transforms']:g}, "
              f"non-200 {h['errors']:g} {h['outcomes']}, edge error metrics "
              f"{h['edge_error_metrics']:g}, distinct bodies {h['distinct_bodies']}, "
              f"last answer after {h['last_s']} s; goal met: {'yes' if h['goal_met'] else 'NO'}")
    print(f"\n(wrk -t{args.threads} -c{args.connections}, {args.runs} x {args.duration} s per "
          f"cell; req/s and MB/s are medians, ratios the median of per-round ratios; wrk "
          f"shares the {os.cpu_count()} cores with the servers)")
    if "granian" in args.servers and "uvicorn" in args.servers:
        print()
        for target in targets:
            g, u = series[("edge (granian)", target.name)], series[("edge (uvicorn)", target.name)]
            speedup = g.ratio(u, target.metric)
            print(f"{target.name}: granian {speedup:.2f}x uvicorn")
            for row in rows:
                if row["object"] == target.name and row["server"] == "edge (granian)":
                    row["x_uvicorn"] = round(speedup, 3)
    print("\ngoals:")
    for goal, met in goals.items():
        print(f"  {'met    ' if met else 'NOT MET'}  {goal}")
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "note": "wrk runs on the same cores as the servers"},
        "load": {"tool": "wrk", "threads": args.threads, "connections": args.connections,
                 "duration_s": args.duration, "runs": args.runs},
        "goals": goals,
        "hits": rows,
        "herd": herd_result,
    }


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of wrk warm-up")
    parser.add_argument("--runs", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--servers", nargs="+", default=["uvicorn", "granian"],
                        type=server_spec, metavar="SERVER[@PYTHON]",
                        help="edge servers (uvicorn or granian), first is judged and runs "
                             "the herd; @PYTHON runs that interpreter's atcdn (another "
                             "checkout side by side, e.g. uvicorn@/tmp/old-venv/bin/python)")
    parser.add_argument("--peers", nargs="*", default=["nginx", "varnish"],
                        choices=["nginx", "varnish"])
    parser.add_argument("--small-bytes", type=int, default=SMALL,
                        help="size cap of the small JPEG (granian slows sharply above ~50,000)")
    parser.add_argument("--herd", type=int, default=2000, help="0 skips the herd")
    parser.add_argument("--no-hits", action="store_true", help="only the herd")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "edge.json")
    args = parser.parse_args(argv)
    for tool in ("wrk", *(p if p == "nginx" else "varnishd" for p in args.peers)):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install nginx varnish wrk)")
    raise_nofile()

    with tempfile.TemporaryDirectory(prefix="atcdn-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx and Varnish workers drop root and must read the docroot
        origin_port = free_port()
        origin_proc = start_origin(work, origin_port)
        origin = f"http://127.0.0.1:{origin_port}"
        try:
            targets, series = ([], {}) if args.no_hits else bench_hits(args, work, origin)
            herd_result = bench_herd(args, work, origin) if args.herd else None
        finally:
            origin_proc.stop()
    result = report(args, targets, series, herd_result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")
    return result


if __name__ == "__main__":
    main()
