"""CPU time per cache hit: an edge's µs of CPU per 50 KB hit, and nginx's for the same file.

Throughput on a shared 2-core box swings with whatever else runs (bench/edge.py saw the
same edge at 18k and 29k req/s); the CPU a server spends per request swings less. So:
one edge worker, ``--seconds`` of memory hits from wrk at a fixed concurrency, and the
server's utime + stime (all its processes and threads, from ``/proc``) before and after
-> µs of CPU per hit. nginx (one worker, sendfile) serves the same bytes the same way.
Servers are measured round-robin, medians reported.

    python bench/hitcost.py                                   # this checkout's edge + nginx
    python bench/hitcost.py --server granian --no-nginx
    python bench/hitcost.py --edges /tmp/old-venv/bin/python python \
        python,ATCDN_LOG_ACCESS=0                             # versions side by side

Each ``--edges`` item is ``PYTHON[,KEY=VALUE...]``: the edge runs that interpreter's
``python -m atcdn.cli`` (so another checkout installed in another venv compares with
this one) in that environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.edge import (  # noqa: E402 - after the path set-up, as bench/edge.py does
    DID,
    NGINX_CONF,
    SMALL,
    TOKEN,
    WRK_REPORT,
    WrkRun,
    fetch,
    make_jpeg,
    put_blob,
    start,
    wrk,
)
from tests.helpers.servers import Process, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(session: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every process in ``session`` (each counts all its
    threads)."""
    user = system = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == session:  # field 6: session id
            user += int(fields[11])  # field 14: utime
            system += int(fields[12])  # field 15: stime
    return user / TICK, system / TICK


def measure(proc: Process, url: str, seconds: float, connections: int, threads: int,
            script: Path) -> tuple[float, float, WrkRun]:
    """µs of the server's user and system CPU per request, over ``seconds`` of requests
    to ``url``."""
    user, system = cpu_seconds(proc.pid)
    run = wrk(url, seconds=seconds, connections=connections, threads=threads, script=script)
    user_after, system_after = cpu_seconds(proc.pid)
    if run.errors or not run.requests:
        raise RuntimeError(f"{url}: {run.errors} errors of {run.requests} requests")
    return ((user_after - user) * 1e6 / run.requests,
            (system_after - system) * 1e6 / run.requests, run)


def start_origin(python: str, work: Path) -> tuple[Process, str]:
    port = free_port()
    proc = start([python, "-m", "atcdn.cli", "origin", "serve", "--host", "127.0.0.1",
                  "--port", str(port), "--data-dir", str(work / "origin-data")],  # not "origin": a package name
                 work, "origin", f"http://127.0.0.1:{port}/health",
                 env={"ATCDN_ORIGIN_TOKEN": TOKEN}, cwd=work)
    return proc, f"http://127.0.0.1:{port}"


def start_edge(spec: str, server: str, work: Path, origin: str, name: str) -> tuple[Process, str]:
    """An edge with one worker; ``spec`` is ``PYTHON[,KEY=VALUE...]`` (its environment)."""
    python, *env_pairs = spec.split(",")
    port = free_port()
    cache = work / f"{name}-data"
    env = {"ATCDN_ALLOW_PRIVATE_NETWORKS": "1", "ATCDN_PDS_FALLBACK": "false",
           "ATCDN_PLC_URL": "http://127.0.0.1:9", **dict(e.split("=", 1) for e in env_pairs)}
    argv = [python, "-m", "atcdn.cli", "edge", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--origin", origin, "--cache-dir", str(cache), "--workers", "1", "--server", server]
    # From ``work``: ``python -m`` puts the working directory first on sys.path, and
    # another checkout's interpreter must not import this one.
    proc = start(argv, work, name, f"http://127.0.0.1:{port}/health", env=env, cwd=work)
    return proc, f"http://127.0.0.1:{port}"


def start_nginx(work: Path, root: Path) -> tuple[Process, str]:
    port = free_port()
    prefix = work / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.replace("worker_processes 2;", "worker_processes 1;")
                    .format(prefix=prefix, port=port, root=root))
    proc = start(["nginx", "-c", str(conf), "-p", str(prefix)], work, "nginx",
                 f"http://127.0.0.1:{port}/health")
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", nargs="+", default=[sys.executable],
                        help="one edge per PYTHON[,KEY=VALUE...]: the interpreter whose atcdn "
                             "it runs, and its environment; measured in interleaved rounds")
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "granian"])
    parser.add_argument("--seconds", type=float, default=3, help="of wrk per round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=5, help="medians are reported")
    parser.add_argument("--routes", nargs="+", default=["img", "blob"], choices=["img", "blob"])
    parser.add_argument("--no-nginx", action="store_true", help="measure the edges only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="atcdn-hitcost-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's worker drops root and must read the docroot
        script = work / "report.lua"
        script.write_text(WRK_REPORT)
        procs: list[Process] = []
        try:
            origin_proc, origin = start_origin(args.edges[0].split(",")[0], work)
            procs.append(origin_proc)
            cid = put_blob(origin, make_jpeg(SMALL))
            paths = {"img": f"/img/feed_thumbnail/plain/{DID}/{cid}@jpeg",
                     "blob": f"/blob/{DID}/{cid}"}
            servers: dict[str, tuple[Process, str]] = {}
            for number, spec in enumerate(args.edges, 1):
                servers[f"edge {number}"] = start_edge(spec, args.server, work, origin,
                                                       f"edge{number}")
                procs.append(servers[f"edge {number}"][0])
            bodies = {}  # each edge's misses; nginx serves the first edge's bytes
            for _, base in reversed(servers.values()):
                bodies = {route: fetch(base + paths[route]) for route in args.routes}
            if not args.no_nginx:
                docroot = work / "docroot"
                for route in args.routes:
                    file = docroot / paths[route].lstrip("/")
                    file.parent.mkdir(parents=True, exist_ok=True)
                    file.write_bytes(bodies[route])
                servers["nginx"] = start_nginx(work, docroot)
                procs.append(servers["nginx"][0])
            results = run_rounds(args, servers, paths, script)
        finally:
            for proc in reversed(procs):
                proc.stop()
    print(f"\nCPU per 50 KB hit, median of {args.rounds} rounds of {args.seconds:g} s "
          f"(wrk -t{args.threads} -c{args.connections}; each edge: 1 {args.server} worker):")
    for route in args.routes:
        nginx = statistics.median(results[("nginx", route)]) if not args.no_nginx else None
        for number, spec in enumerate(args.edges, 1):
            cost = statistics.median(results[(f"edge {number}", route)])
            ratio = f"  ({cost / nginx:.1f}x nginx)" if nginx else ""
            print(f"  /{route:4} edge {number}: {cost:6.1f} µs{ratio}   {spec}")
        if nginx:
            print(f"  /{route:4} nginx:  {nginx:6.1f} µs   (1 worker, sendfile)")


def run_rounds(args: argparse.Namespace, servers: dict[str, tuple[Process, str]],
               paths: dict[str, str], script: Path) -> dict[tuple[str, str], list[float]]:
    """Warm every server, then measure round-robin: load from elsewhere on the machine
    falls on every server alike."""
    load = {"connections": args.connections, "threads": args.threads, "script": script}
    results: dict[tuple[str, str], list[float]] = {}
    for proc, base in servers.values():
        for route in args.routes:
            measure(proc, base + paths[route], 1, **load)
    for round_ in range(args.rounds):
        for route in args.routes:
            for name, (proc, base) in servers.items():
                user, system, run = measure(proc, base + paths[route], args.seconds, **load)
                results.setdefault((name, route), []).append(user + system)
                print(f"  round {round_ + 1} /{route:4} {name:6} {user + system:6.1f} µs/hit "
                      f"(user {user:5.1f}, system {system:5.1f}; {run.requests} hits, "
                      f"{run.rps:,.0f} req/s)", flush=True)
    return results


if __name__ == "__main__":
    main()
