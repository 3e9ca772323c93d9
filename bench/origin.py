"""Origin PUT/GET throughput, as a ratio to this machine's sha256 speed (same run).

Run from the repository root:  python bench/origin.py [--server uvicorn|granian] [--reps 5]

A real origin (fs store, fsync on every commit) is started on a free port; each PUT
stores new bytes (so every one hashes, writes, fsyncs and links), each GET reads a
stored blob. 50 MB transfers use curl and 50 KB GETs use wrk (native clients, so the
client's own cost does not hide the server's; httpx is the fallback without them);
50 KB PUTs use a keep-alive httpx client, one request at a time. The client runs on the
same machine and competes for its cores: the ratios are conservative.
Goal: PUT 50 MB >= 0.7x the sha256 limit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atcdn.core.cid import compute

from tests.helpers.servers import Process, atcdn, free_port

TOKEN = "bench-token"
MB = 1024 * 1024


def sha256_speed(size: int = 50 * MB, reps: int = 5) -> float:
    """Bytes per second hashlib.sha256 manages on one core here (median of reps)."""
    data = os.urandom(size)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        hashlib.sha256(data).digest()
        times.append(time.perf_counter() - start)
    return size / statistics.median(times)


def blobs(size: int, count: int) -> list[tuple[str, bytes]]:
    """Distinct blobs (a random prefix varies the bytes cheaply)."""
    base = os.urandom(size)
    out = []
    for _ in range(count):
        data = os.urandom(16) + base[16:]
        out.append((compute(data), data))
    return out


def curl_seconds(args: list[str]) -> float:
    """Run one curl transfer; return its own time_total (excludes process start-up)."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                          *args], check=True, capture_output=True, text=True).stdout
    status, seconds = out.split()
    assert status in ("200", "201"), out
    return float(seconds)


def curl_put(url: str, size: int, reps: int, tmp: Path) -> float:
    rates = []
    for cid, data in blobs(size, reps):
        path = tmp / "upload.bin"
        path.write_bytes(data)
        seconds = curl_seconds(["-X", "PUT", "-H", f"Authorization: Bearer {TOKEN}",
                                "-T", str(path), f"{url}/blob/{cid}"])
        rates.append(size / seconds)
    path.unlink()
    return statistics.median(rates)


def sink_put(server: str, size: int, reps: int, tmp: Path) -> float:
    """PUT throughput into bench/sink.py (drains the body, stores nothing), same server."""
    port = free_port()
    code = ("from atcdn.cli.serve import run; "
            f"run('bench.sink:create_app', host='127.0.0.1', port={port}, workers=1, "
            f"server='{server}')")
    proc = Process([sys.executable, "-c", code], log=tmp / "sink.log", cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.put(url, content=b"")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        path = tmp / "sink.bin"
        path.write_bytes(os.urandom(size))
        rates = [size / curl_seconds(["-X", "PUT", "-T", str(path), url]) for _ in range(reps)]
        path.unlink()
        return statistics.median(rates)
    finally:
        proc.stop()


def curl_get(client: httpx.Client, url: str, size: int, reps: int) -> float:
    [(cid, data)] = blobs(size, 1)
    client.put(f"/blob/{cid}", content=data,
               headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    return statistics.median(size / curl_seconds([f"{url}/blob/{cid}"]) for _ in range(reps))


def wrk_get(client: httpx.Client, url: str, size: int, reps: int) -> float:
    """Median bytes/s of 2-second wrk runs (16 connections) GETting one stored blob."""
    [(cid, data)] = blobs(size, 1)
    client.put(f"/blob/{cid}", content=data,
               headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    rates = []
    for _ in range(reps):
        out = subprocess.run(["wrk", "-t1", "-c16", "-d2s", f"{url}/blob/{cid}"], check=True,
                             capture_output=True, text=True).stdout
        assert "Non-2xx" not in out, out
        line = next(line for line in out.splitlines() if line.startswith("Requests/sec:"))
        rates.append(float(line.split()[1]) * size)
    return statistics.median(rates)


def bench_put(client: httpx.Client, size: int, reps: int, batch: int) -> float:
    """Median bytes/s over ``reps`` rounds of ``batch`` sequential PUTs of new blobs."""
    rates = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(reps):
        round_blobs = blobs(size, batch)
        start = time.perf_counter()
        for cid, data in round_blobs:
            response = client.put(f"/blob/{cid}", content=data, headers=auth)
            assert response.status_code == 201, response.text
        rates.append(size * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_get(client: httpx.Client, size: int, reps: int, batch: int) -> float:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    stored = blobs(size, batch)
    for cid, data in stored:
        client.put(f"/blob/{cid}", content=data, headers=auth).raise_for_status()
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for cid, _ in stored:
            received = 0
            with client.stream("GET", f"/blob/{cid}") as response:
                assert response.status_code == 200
                for chunk in response.iter_raw(MB):
                    received += len(chunk)
            assert received == size
        rates.append(size * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn",
                        help="the origin's ASGI server")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    hash_rate = sha256_speed()
    with tempfile.TemporaryDirectory(prefix="atcdn-bench-") as tmp:
        port = free_port()
        proc = Process(atcdn("origin", "serve", "--port", str(port), "--data-dir", tmp + "/o",
                             "--server", args.server, "--workers", "1"),
                       env={"ATCDN_ORIGIN_TOKEN": TOKEN}, log=Path(tmp) / "origin.log", cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            proc.wait_http(url + "/health")
            with httpx.Client(base_url=url, timeout=120.0) as client:
                sink = None
                if shutil.which("curl"):
                    put_big = curl_put(url, 50 * MB, args.reps, Path(tmp))
                    sink = sink_put(args.server, 50 * MB, args.reps, Path(tmp))
                    get_big = curl_get(client, url, 50 * MB, args.reps)
                else:  # slower client: the ratios will understate the server
                    put_big = bench_put(client, 50 * MB, args.reps, 1)
                    get_big = bench_get(client, 50 * MB, args.reps, 1)
                rows = [
                    ("PUT", "50 KB", bench_put(client, 50_000, args.reps, 100)),
                    ("PUT", "50 MB", put_big),
                    ("GET", "50 KB", wrk_get(client, url, 50_000, args.reps) if shutil.which("wrk")
                     else bench_get(client, 50_000, args.reps, 100)),
                    ("GET", "50 MB", get_big),
                ]
        finally:
            proc.stop()

    print(f"origin bench: server={args.server}, fs store, 1 worker, {args.reps} reps "
          f"(medians); sha256 here = {hash_rate / MB:.0f} MB/s")
    print(f"{'op':<4} {'size':>6} {'MB/s':>8} {'req/s':>7} {'x sha256':>9}")
    for op, size, rate in rows:
        per_request = 50_000 if size == "50 KB" else 50 * MB
        print(f"{op:<4} {size:>6} {rate / MB:>8.1f} {rate / per_request:>7.1f} "
              f"{rate / hash_rate:>9.2f}")
    if sink is not None:
        print(f"peer: PUT 50 MB into a no-op app on the same server (receive ceiling): "
              f"{sink / MB:.0f} MB/s = {sink / hash_rate:.2f}x sha256; origin PUT reaches "
              f"{rows[1][2] / sink:.2f}x of it")
    put_50mb = rows[1][2] / hash_rate
    print(f"goal PUT 50 MB >= 0.70x sha256: {'met' if put_50mb >= 0.7 else 'MISSED'} "
          f"({put_50mb:.2f}x)")


if __name__ == "__main__":
    main()
