"""Soak: minutes of mixed load on one origin and a 2-worker edge, checking every answer.

    python bench/soak.py --seconds 600

Hits and misses on every preset, raw blobs, video (playlist, segments, thumbnail), hostile
files, takedowns and restores, purges, and new blobs arriving all along. Every 200 is
verified by the client (raw bytes against their CID, images decoded, playlists parsed);
every other answer must be the one expected for its request. RSS of every process of the
node is sampled; the report gives each one's slope after warm-up, the cache's disk use
against its budget, and the count of unexpected answers (the goal: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atcdn.core.cid import compute  # noqa: E402

from tests.helpers.clips import make_clip  # noqa: E402
from tests.helpers.env import ADMIN_TOKEN, TOKEN  # noqa: E402
from tests.helpers.nodes import Origin, start_edge  # noqa: E402

DID = "did:plc:" + "s" * 24
PRESETS = ["avatar", "avatar_thumbnail", "banner", "feed_thumbnail", "feed_fullsize"]
FORMATS = ["jpeg", "webp", "png"]
AUTH = {"authorization": f"Bearer {TOKEN}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}  # the origin's admin routes
CACHE_BUDGET = 256 << 20


def picture(seed: int) -> bytes:
    rng = random.Random(seed)
    w, h = rng.choice([(640, 480), (1600, 1200), (300, 900), (2400, 1000)])
    image = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    image.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (0, 0, w // 3, h // 3))
    out = io.BytesIO()
    image.save(out, rng.choice(["JPEG", "PNG", "WEBP"]), quality=88)
    return out.getvalue()


def hostile() -> list[bytes]:
    good = picture(999)
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, "PNG")  # 400 MP of zeros, ~400 KB
    return [good[: len(good) // 3], b"\x89PNG\r\n\x1a\n" + os.urandom(4000), bomb.getvalue(),
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"]


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0


def tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return [pid] + [q for k in kids for q in tree(k)]


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope in MiB per minute."""
    if len(points) < 3:
        return 0.0
    xs = [t / 60 for t, _ in points]
    ys = [v / 2**20 for _, v in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs) or 1.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


class Soak:
    def __init__(self, origin: str, edge: str, seconds: float) -> None:
        self.origin, self.edge, self.seconds = origin, edge, seconds
        self.blobs: dict[str, bytes] = {}
        self.down: set[str] = set()  # taken down everywhere: must answer 451
        self.changing: set[str] = set()  # a takedown or restore under way: 200 or 451
        self.propagation: list[float] = []  # seconds from an origin takedown to the edge
        self.retried = 0
        self.answers: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.seed = 0

    def count(self, kind: str, ok: bool, detail: str = "") -> None:
        self.answers[kind] = self.answers.get(kind, 0) + 1
        if not ok and len(self.unexpected) < 200:
            self.unexpected.append(f"{kind}: {detail}")

    async def add_blob(self, http: httpx.AsyncClient) -> str:
        self.seed += 1
        data = picture(self.seed)
        cid = compute(data)
        r = await http.put(f"{self.origin}/blob/{cid}", params={"did": DID}, content=data, headers=AUTH)
        self.count("put", r.status_code in (200, 201), r.text[:200])
        self.blobs[cid] = data
        return cid

    async def image(self, http: httpx.AsyncClient) -> None:
        cid = random.choice(list(self.blobs))
        preset, fmt = random.choice(PRESETS), random.choice(FORMATS)
        r = await self.get(http, f"{self.edge}/img/{preset}/plain/{DID}/{cid}@{fmt}")
        if cid in self.changing:
            self.count("img-changing", r.status_code in (200, 451), f"{r.status_code}")
            return
        if cid in self.down:
            self.count("img-down", r.status_code == 451, f"{r.status_code} for taken-down {cid}")
            return
        if r.status_code == 503 and r.json().get("error") == "Purged":
            self.count("img-purged-meanwhile", True)  # a purge overtook this miss: retry
            return
        ok = r.status_code == 200
        if ok:
            try:
                Image.open(io.BytesIO(r.content)).verify()
            except Exception as exc:  # noqa: BLE001
                ok, r = False, f"undecodable {exc!r}"  # type: ignore[assignment]
        self.count("img", ok, f"{preset}@{fmt} {cid}: {getattr(r, 'status_code', r)} "
                   f"{getattr(r, 'text', '')[:120] if not ok else ''}")

    async def blob(self, http: httpx.AsyncClient) -> None:
        cid = random.choice(list(self.blobs))
        r = await self.get(http, f"{self.edge}/blob/{DID}/{cid}")
        if cid in self.changing:
            self.count("blob-changing", r.status_code in (200, 451), f"{r.status_code}")
            return
        if cid in self.down:
            self.count("blob-down", r.status_code == 451, f"{r.status_code}")
            return
        if r.status_code == 503 and r.json().get("error") == "Purged":
            self.count("blob-purged-meanwhile", True)  # a purge overtook this miss: retry
            return
        self.count("blob", r.status_code == 200 and compute(r.content) == cid,
                   f"{r.status_code} {r.text[:120] if r.status_code != 200 else ''}")

    async def hostile(self, http: httpx.AsyncClient, cids: list[str]) -> None:
        cid = random.choice(cids)
        r = await self.get(http, f"{self.edge}/img/feed_thumbnail/plain/{DID}/{cid}@webp")
        self.count("hostile", 400 <= r.status_code < 500, f"{r.status_code} {r.text[:120]}")

    async def video(self, http: httpx.AsyncClient, cid: str) -> None:
        base = f"{self.edge}/watch/{DID}/{cid}"
        r = await self.get(http, base + "/playlist.m3u8")
        if r.status_code in (202, 429):  # transcoding, or the queue is full: expected
            self.count("video-wait", True)
            return
        ok = r.status_code == 200 and r.text.startswith("#EXTM3U")
        if ok:
            variant = next(line for line in r.text.splitlines() if line and not line.startswith("#"))
            media = await self.get(http, f"{base}/{variant}")
            ok = media.status_code == 200
            segments = [line for line in media.text.splitlines() if line and not line.startswith("#")]
            if ok and segments:
                folder = variant.rsplit("/", 1)[0]
                seg = await self.get(http, f"{base}/{folder}/{random.choice(segments)}")
                ok = seg.status_code == 200 and len(seg.content) > 0
        thumb = await self.get(http, base + "/thumbnail.jpg")
        ok = ok and thumb.status_code in (200, 202)
        self.count("video", ok, f"{r.status_code} {r.text[:120]}")

    async def moderate(self, http: httpx.AsyncClient) -> None:
        """A takedown at the origin only, as an operator does it: the edge learns it from
        the origin's takedown feed. Then a restore the same way."""
        cid = random.choice([c for c in self.blobs if c not in self.changing])
        self.changing.add(cid)
        for action, want in (("takedown", 451), ("restore", 200)):
            r = await http.post(f"{self.origin}/admin/{action}", json={"cid": cid},
                                headers=ADMIN)
            self.count(action, r.status_code == 200, f"{r.status_code} {r.text[:120]}")
            started = time.monotonic()
            while time.monotonic() - started < 30:  # the bound for every edge
                if (await self.get(http, f"{self.edge}/blob/{DID}/{cid}")).status_code == want:
                    self.propagation.append(time.monotonic() - started)
                    break
                await asyncio.sleep(0.1)
            else:
                self.count(f"{action}-propagated", False, f"{cid} not {want} within 30 s")
            if action == "takedown":
                self.changing.discard(cid)
                self.down.add(cid)
                await asyncio.sleep(random.uniform(1, 5))
                self.down.discard(cid)
                self.changing.add(cid)
        await asyncio.sleep(1.0)  # until every worker has the restore
        self.changing.discard(cid)

    async def get(self, http: httpx.AsyncClient, url: str) -> httpx.Response:
        """GET, retried once when a kept-alive connection was closed under the request
        (the server's idle timeout racing the client's reuse), as browsers do."""
        try:
            return await http.get(url)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            self.retried += 1
            return await http.get(url)

    async def purge(self, http: httpx.AsyncClient) -> None:
        cid = random.choice(list(self.blobs))
        r = await http.post(f"{self.edge}/admin/purge", json={"cid": cid}, headers=AUTH)
        self.count("purge", r.status_code == 200, f"{r.status_code} {r.text[:120]}")

    async def run(self, video_cids: list[str], hostile_cids: list[str]) -> None:
        deadline = time.monotonic() + self.seconds
        async with httpx.AsyncClient(timeout=120) as http:
            for _ in range(20):
                await self.add_blob(http)

            async def worker(n: int) -> None:
                while time.monotonic() < deadline:
                    roll = random.random()
                    try:
                        if roll < 0.45:
                            await self.image(http)
                        elif roll < 0.75:
                            await self.blob(http)
                        elif roll < 0.80:
                            await self.add_blob(http)
                        elif roll < 0.85:
                            await self.hostile(http, hostile_cids)
                        elif roll < 0.90:
                            await self.video(http, random.choice(video_cids))
                        elif roll < 0.93 and n == 0:
                            await self.moderate(http)
                        elif roll < 0.95:
                            await self.purge(http)
                        else:
                            await asyncio.sleep(0.05)
                    except httpx.HTTPError as exc:
                        self.count("transport", False, repr(exc))

            await asyncio.gather(*(worker(n) for n in range(8)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to run (default 600)")
    parser.add_argument("--warmup", type=float, default=120.0, help="RSS slope ignores this start")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atcdn-soak-") as tmp_name:
        tmp = Path(tmp_name)
        origin = Origin(tmp / "origin", {}, tmp / "origin.log")
        origin.start()
        edge = start_edge(origin.url, tmp / "cache", tmp / "edge.log", workers=2,
                          env={"ATCDN_PDS_FALLBACK": "0", "ATCDN_EDGE_CACHE_SIZE": str(CACHE_BUDGET),
                               # the edge follows the origin's takedown feed every second
                               "ATCDN_TAKEDOWN_POLL_INTERVAL": "1"})
        try:
            with httpx.Client(timeout=60) as http:
                def push(data: bytes) -> str:
                    cid = compute(data)
                    http.put(f"{origin.url}/blob/{cid}", params={"did": DID}, content=data,
                             headers=AUTH).raise_for_status()
                    return cid
                videos = [push(make_clip(tmp / f"clip{i}.mp4", seconds=4, width=640, height=360,
                                         audio=i == 0).read_bytes()) for i in range(2)]
                bad = [push(data) for data in hostile()]
            soak = Soak(origin.url, edge.url, args.seconds)
            samples: dict[str, list[tuple[float, int]]] = {}
            started = time.monotonic()

            async def sampler() -> None:
                while time.monotonic() - started < args.seconds:
                    now = time.monotonic() - started
                    for role, leader in (("origin", origin.proc.pid), ("edge", edge.proc.pid)):
                        for i, pid in enumerate(tree(leader)):
                            samples.setdefault(f"{role}[{pid}]", []).append((now, rss(pid)))
                    await asyncio.sleep(5)

            async def both() -> None:
                await asyncio.gather(soak.run(videos, bad), sampler())

            asyncio.run(both())
            disk = sum(p.stat().st_size for p in (tmp / "cache").rglob("*") if p.is_file())
            # Slopes of the processes that lived through the run (servers and their
            # workers); decoders and transcoders come and go, so only their peak counts.
            whole = {k: v for k, v in samples.items()
                     if v[0][0] <= args.warmup and v[-1][0] >= args.seconds - 15}
            result = {
                "seconds": args.seconds, "answers": soak.answers,
                "unexpected": len(soak.unexpected), "unexpected_examples": soak.unexpected[:20],
                "retried_after_keepalive_close": soak.retried,
                "takedown_propagation_s": {
                    "n": len(soak.propagation),
                    "max": round(max(soak.propagation, default=0), 2),
                    "median": round(statistics.median(soak.propagation or [0]), 2)},
                "rss_mib_end": {k: round(v[-1][1] / 2**20, 1) for k, v in whole.items()},
                "rss_slope_mib_per_min": {k: round(slope([p for p in v if p[0] >= args.warmup]), 3)
                                          for k, v in whole.items()},
                "short_lived_processes": len(samples) - len(whole),
                "short_lived_peak_rss_mib": round(max(
                    (max(r for _, r in v) for k, v in samples.items() if k not in whole),
                    default=0) / 2**20, 1),
                "cache_disk_bytes": disk, "cache_budget_bytes": CACHE_BUDGET,
            }
        finally:
            edge.proc.stop()
            origin.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
