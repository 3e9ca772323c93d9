"""A real video node (origin + edge processes) and the HLS checks the video tests share:
fetch every rendition, probe it with ffprobe."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from atcdn.core.cid import compute

from tests.helpers.env import TOKEN
from tests.helpers.nodes import Edge, Origin, start_edge
from tests.helpers.servers import static_server

DID = "did:plc:" + "a" * 24


class WatchServer:
    """A video node: a real origin and a real ``atcdn edge serve`` in front of it.

    ``add`` stores a blob in the origin; ``url`` is the edge. With ``static``, that
    directory is served from another 127.0.0.1 origin (``static_url``), as a site
    embedding the player would be. Settings are ``ATCDN_EDGE_*`` values by name.
    """

    def __init__(self, base: Path, *, workers: int = 2, static: Path | None = None,
                 **settings: str | int | float) -> None:
        self.base = base
        self.cache = base / "cache"
        self.workers = workers
        self.static = static
        self.env = {"ATCDN_PDS_FALLBACK": "0",
                    **{f"ATCDN_EDGE_{k.upper()}": str(v) for k, v in settings.items()}}
        self.origin: Origin | None = None
        self.edge: Edge | None = None
        self._static: contextlib.ExitStack | None = None
        self.url = ""
        self.static_url = ""

    def start(self) -> "WatchServer":
        self.base.mkdir(parents=True, exist_ok=True)
        self.origin = Origin(self.base / "origin", {}, self.base / "origin.log")
        self.origin.start()
        self.edge = start_edge(self.origin.url, self.cache, self.base / "edge.log",
                               workers=self.workers, env=self.env)
        self.url = self.edge.url
        if self.static is not None and self._static is None:
            self._static = contextlib.ExitStack()
            self.static_url = self._static.enter_context(static_server(self.static))
        return self

    def stop(self, sig: int | None = None) -> None:
        """Stop the edge (with ``sig``, e.g. SIGKILL mid-transcode) and the origin."""
        if self.edge is not None:
            self.edge.proc.stop(*(() if sig is None else (sig,)))
            self.edge = None
        if self.origin is not None:
            self.origin.stop()
            self.origin = None
        if self._static is not None:
            self._static.close()
            self._static = None

    def add(self, data: bytes) -> str:
        """Store ``data`` in the origin; its CID."""
        cid = compute(data)
        assert self.origin is not None
        stored = httpx.put(f"{self.origin.url}/blob/{cid}", content=data, timeout=60,
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert stored.status_code in (200, 201), stored.text
        return cid

    def video_url(self, cid: str, did: str = DID) -> str:
        return f"{self.url}/watch/{did}/{cid}"

    def starts(self, cid: str) -> int:
        """How many times a transcode of ``cid`` really started on this node."""
        log = self.cache / "video" / f"{cid}.log"
        return log.read_text().count("transcode start") if log.exists() else 0

    def wait_done(self, cid: str, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = httpx.get(self.video_url(cid) + "/status", timeout=10).json()
            if status["state"] in ("done", "failed"):
                return status
            time.sleep(0.2)
        raise TimeoutError(f"transcode of {cid} did not finish")


# ------------------------------------------------------------------------ probing


def ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
                         capture_output=True, check=True, text=True).stdout
    return json.loads(out)


@dataclass
class Source:
    width: int  # displayed (rotation applied)
    height: int
    fps: float  # average, 0 when unknown
    duration: float
    has_audio: bool
    frames: int


def probe_source(path: Path) -> Source:
    info = ffprobe(path, "-show_streams", "-show_format", "-count_packets")
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    rotation = 0
    for side in video.get("side_data_list", []):
        rotation = int(float(side.get("rotation", 0)))
    w, h = video["width"], video["height"]
    if abs(rotation) % 180 == 90:
        w, h = h, w
    num, _, den = video.get("avg_frame_rate", "0/0").partition("/")
    fps = float(num) / float(den) if float(den or 0) else 0.0
    duration = float(video.get("duration") or info["format"].get("duration") or 0)
    has_audio = any(s["codec_type"] == "audio" for s in info["streams"])
    return Source(w, h, fps, duration, has_audio, int(video.get("nb_read_packets", 0)))


@dataclass
class Variant:
    uri: str
    width: int
    height: int
    codecs: str


def parse_master(text: str) -> list[Variant]:
    lines = text.splitlines()
    variants = []
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            w, h = re.search(r"RESOLUTION=(\d+)x(\d+)", line).groups()
            codecs = re.search(r'CODECS="([^"]+)"', line).group(1)
            variants.append(Variant(lines[i + 1], int(w), int(h), codecs))
    return variants


def parse_media(text: str) -> tuple[list[float], list[str], bool]:
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", text)]
    uris = [line for line in text.splitlines() if line and not line.startswith("#")]
    return durations, uris, "#EXT-X-ENDLIST" in text


@dataclass
class RenditionProbe:
    variant: Variant
    durations: list[float]
    keyframes: list[float]
    streams: list[dict]
    video_duration: float
    fps: float
    frames: int


def fetch_rendition(client: httpx.Client, base: str, variant: Variant, dest: Path
                    ) -> RenditionProbe:
    """Download a rendition's init section and segments into one file and probe it."""
    folder = variant.uri.rsplit("/", 1)[0]
    playlist = client.get(f"{base}/{variant.uri}")
    assert playlist.status_code == 200
    durations, uris, ended = parse_media(playlist.text)
    assert ended, "finished playlist without #EXT-X-ENDLIST"
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist.text).group(1)
    data = bytearray()
    for name in [init, *uris]:
        response = client.get(f"{base}/{folder}/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] in ("video/mp4", "video/iso.segment")
        assert int(response.headers["content-length"]) == len(response.content)
        data += response.content
    dest.write_bytes(data)
    info = ffprobe(dest, "-show_streams")
    packets = ffprobe(dest, "-select_streams", "v", "-show_entries", "packet=pts_time,flags")
    keyframes = [float(p["pts_time"]) for p in packets["packets"] if "K" in p["flags"]]
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    num, _, den = video["avg_frame_rate"].partition("/")
    fps = float(num) / float(den) if float(den or 0) else 0.0
    return RenditionProbe(variant, durations, keyframes, info["streams"],
                          float(video.get("duration", 0)), fps, len(packets["packets"]))


def check_hls(client: httpx.Client, base: str, source: Source, work: Path) -> list[RenditionProbe]:
    """The ffprobe checks every transcoded video must pass; returns what was measured."""
    master = client.get(f"{base}/playlist.m3u8")
    assert master.status_code == 200
    assert master.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in master.text
    variants = parse_master(master.text)
    assert variants, master.text
    probes = []
    for variant in variants:
        probe = fetch_rendition(client, base, variant, work / variant.uri.replace("/", "_"))
        probes.append(probe)
        kinds = {s["codec_type"]: s for s in probe.streams}
        video = kinds["video"]
        assert video["codec_name"] == "h264"
        assert (video["width"], video["height"]) == (variant.width, variant.height)
        assert variant.width <= source.width and variant.height <= source.height  # no upscale
        if source.width != source.height:  # orientation kept: portrait stays portrait
            assert (variant.width > variant.height) == (source.width > source.height)
        if source.has_audio:
            assert kinds["audio"]["codec_name"] == "aac"
            assert kinds["audio"]["channels"] == 2
            assert variant.codecs.endswith(",mp4a.40.2")
        else:
            assert "audio" not in kinds
        # Segments: a short first one, then ~4 s; each starts with a keyframe.
        durations = probe.durations
        assert durations[0] <= 1.5
        for d in durations[2:-1]:
            assert abs(d - 4.0) < 0.6, durations
        assert all(d <= 4.6 for d in durations), durations
        assert len(probe.keyframes) == len(durations)
        assert abs(sum(durations) - source.duration) < 0.5, (durations, source.duration)
        assert abs(probe.video_duration - source.duration) < 0.5
        assert probe.fps <= 60.5
        # Frame rate kept (every frame, VFR included) up to 60 fps, capped above.
        expected = source.frames * min(1.0, 60.5 / source.fps) if source.fps else source.frames
        assert abs(probe.frames - expected) <= max(1, 0.05 * expected), (probe.frames, expected)
    first = probes[0].keyframes
    for probe in probes[1:]:  # keyframes aligned across renditions
        assert len(probe.keyframes) == len(first)
        assert all(abs(a - b) < 0.002 for a, b in zip(first, probe.keyframes))
    return probes
