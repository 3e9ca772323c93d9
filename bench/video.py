"""Video bench: our PyAV transcoder against the ffmpeg CLI doing the same ladder.

    python bench/video.py [--runs 3] [--source FILE]

Source: a 20 s 1080p30 clip (ffmpeg testsrc2 + a sine tone) unless --source is given.
Both sides encode 360p + 720p + 1080p with libx264 veryfast, CRF 23, the same peak
rates, bilinear scaling, keyframes forced at the same times (1 s, then every 4 s, no
scene cuts), AAC-LC 128 kb/s 48 kHz stereo, fMP4 HLS segments. Runs alternate between
the two; medians are reported.

1. total transcode wall time: ``python -m edge.video`` vs ``ffmpeg -f hls`` (ratio, goal
   <= 1.0x);
2. time to first playable segment: from the first HTTP request for playlist.m3u8 to
   having the first media playlist, init section and first segment of the lowest
   rendition, through a real /watch server (granian, 2 workers; goal <= 2 s). For context,
   the same moment for the ffmpeg CLI: its first segment file and playlist entry.
"""

from __future__ import annotations

import argparse
import json
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

from atcdn.edge import hls  # noqa: E402

from tests.helpers.watch import WatchServer  # noqa: E402


def make_source(path: Path, seconds: int = 20) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "fast", "-crf", "18", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)], check=True)


def ffmpeg_argv(source: Path, out: Path, duration: float) -> list[str]:
    """The ffmpeg CLI doing what edge/video.py does."""
    ladder = hls.ladder(1920, 1080, 30)
    split = "".join(f"[s{i}]" for i in range(len(ladder)))
    graph = f"[0:v]split={len(ladder)}{split};" + ";".join(
        f"[s{i}]scale={r.width}:{r.height}:flags=bilinear[v{i}]" for i, r in enumerate(ladder))
    keys, t = [], 0.0
    while t < duration:
        keys.append(f"{t:g}")
        t = hls.next_boundary(t, 0.0)
    argv = ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-filter_complex", graph]
    for i in range(len(ladder)):
        argv += ["-map", f"[v{i}]", "-map", "0:a"]
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-profile:v", "high",
             "-sc_threshold", "0", "-force_key_frames", ",".join(keys),
             "-x264-params", "scenecut=0"]
    for i, r in enumerate(ladder):
        argv += [f"-maxrate:v:{i}", str(r.maxrate), f"-bufsize:v:{i}", str(r.bufsize)]
    argv += ["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "48000",
             "-f", "hls", "-hls_time", "4", "-hls_segment_type", "fmp4",
             "-hls_playlist_type", "event",
             "-var_stream_map", " ".join(f"v:{i},a:{i}" for i in range(len(ladder))),
             "-master_pl_name", "playlist.m3u8", str(out / "%v" / "index.m3u8")]
    return argv


def run_ffmpeg(source: Path, out: Path, duration: float) -> tuple[float, float]:
    """Wall time, and when the first segment of the lowest rendition was listed."""
    out.mkdir(parents=True)
    start = time.monotonic()
    proc = subprocess.Popen(ffmpeg_argv(source, out, duration))
    first = None
    playlist = out / "0" / "index.m3u8"
    while proc.poll() is None:
        if first is None and playlist.exists() and "#EXTINF" in playlist.read_text():
            first = time.monotonic() - start
        time.sleep(0.01)
    wall = time.monotonic() - start
    assert proc.returncode == 0
    return wall, first if first is not None else wall


def run_ours(source: Path, out: Path) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "atcdn.edge.video", str(source), str(out), "{}", ""],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    assert (out / "done").exists()
    return wall


def first_segment_over_http(source: Path, work: Path) -> float:
    """A fresh node (real origin + real edge, granian, 2 workers) holding the source in its
    origin only; time from the first request to the first playable segment, which
    includes the edge fetching and verifying the blob."""
    server = WatchServer(work / "node", workers=2).start()
    try:
        url = server.video_url(server.add(source.read_bytes()))
        with httpx.Client(timeout=60) as client:
            start = time.monotonic()
            master = client.get(url + "/playlist.m3u8")
            assert master.status_code == 200, master.text
            media_uri = next(line for line in master.text.splitlines()
                             if line and not line.startswith("#"))
            folder = media_uri.rsplit("/", 1)[0]
            media = client.get(f"{url}/{media_uri}")
            segment = next(line for line in media.text.splitlines()
                           if line and not line.startswith("#"))
            for name in ("init.mp4", segment):
                assert client.get(f"{url}/{folder}/{name}").status_code == 200
            elapsed = time.monotonic() - start
            deadline = time.monotonic() + 300
            while client.get(url + "/status").json()["state"] != "done":
                assert time.monotonic() < deadline
                time.sleep(0.2)
        return elapsed
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path)
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg CLI not found")
    with tempfile.TemporaryDirectory(prefix="atcdn-bench-video-") as tmp:
        work = Path(tmp)
        source = args.source or work / "source_1080p_20s.mp4"
        if args.source is None:
            make_source(source)
        probe = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-of", "json", "-show_format", str(source)],
            capture_output=True, text=True, check=True).stdout)
        duration = float(probe["format"]["duration"])
        ours, theirs, ff_first, first = [], [], [], []
        for i in range(args.runs):
            wall, ff_seg = run_ffmpeg(source, work / f"ff{i}", duration)
            theirs.append(wall)
            ff_first.append(ff_seg)
            ours.append(run_ours(source, work / f"ours{i}"))
            first.append(first_segment_over_http(source, work / f"http{i}"))
            print(f"run {i + 1}: ours {ours[-1]:.2f} s, ffmpeg {theirs[-1]:.2f} s, "
                  f"first segment ours {first[-1]:.2f} s (ffmpeg CLI {ff_seg:.2f} s)",
                  flush=True)
        med = statistics.median
        result = {
            "source": f"{source.name}, {duration:.1f} s",
            "runs": args.runs,
            "ours_wall_s": round(med(ours), 2),
            "ffmpeg_wall_s": round(med(theirs), 2),
            "ratio_ours_over_ffmpeg": round(med(ours) / med(theirs), 3),
            # Each run pairs one of ours with one ffmpeg run, back to back: on a shared,
            # noisy machine the median of those ratios is the steadier figure.
            "paired_ratio_median": round(med(o / t for o, t in zip(ours, theirs)), 3),
            "load_average_at_end": round(os.getloadavg()[0], 2),
            "first_segment_s": round(med(first), 2),
            "ffmpeg_first_segment_s": round(med(ff_first), 2),
            "realtime_factor_ours": round(duration / med(ours), 2),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
