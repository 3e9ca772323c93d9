"""HLS, as data: the rendition ladder, H.264 levels, segment boundaries and playlist text.

Pure code, no I/O. The transcoder (edge/video.py) asks this module what to encode and
where to cut; it then writes the playlists this module renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

RUNGS = (360, 720, 1080)  # standard "p" values; the ladder never goes above the source
SEGMENT_SECONDS = 4.0
# The first segment is short so a viewer can start playing as soon as possible; the
# second one ends on the regular grid (4, 8, 12 s...).
FIRST_SEGMENT_SECONDS = 1.0
MAX_FPS = 60.0
AUDIO_BITRATE = 128_000
AUDIO_CODECS = "mp4a.40.2"  # AAC-LC
INIT_NAME = "init.mp4"
MEDIA_PLAYLIST = "index.m3u8"
MASTER_PLAYLIST = "playlist.m3u8"

# Peak video bitrate of each rung at up to 30 fps (x264 VBV maxrate); above 30 fps x1.5.
_MAXRATE = {360: 1_000_000, 720: 3_000_000, 1080: 6_000_000}

# H.264 levels (Table A-1): (level_idc, max macroblocks per second, max frame size in MBs).
_LEVELS = (
    (10, 1_485, 99), (11, 3_000, 396), (12, 6_000, 396), (13, 11_880, 396),
    (20, 11_880, 396), (21, 19_800, 792), (22, 20_250, 1_620), (30, 40_500, 1_620),
    (31, 108_000, 3_600), (32, 216_000, 5_120), (40, 245_760, 8_192), (41, 245_760, 8_192),
    (42, 522_240, 8_704), (50, 589_824, 22_080), (51, 983_040, 36_864), (52, 2_073_600, 36_864),
)


@dataclass(frozen=True)
class Rendition:
    """One rung of the ladder: an H.264 video size, its level and peak bitrate."""

    p: int  # the short side, as in "720p"
    width: int
    height: int
    fps: float
    maxrate: int  # bits/s, video only
    level: int  # H.264 level_idc, e.g. 31 for 3.1

    @property
    def name(self) -> str:
        return f"{self.p}p"

    @property
    def bufsize(self) -> int:
        return 2 * self.maxrate

    def codecs(self, has_audio: bool) -> str:
        video = f"avc1.6400{self.level:02x}"  # High profile, no constraint flags
        return f"{video},{AUDIO_CODECS}" if has_audio else video

    def bandwidth(self, has_audio: bool) -> int:
        return self.maxrate + (AUDIO_BITRATE if has_audio else 0)


def _even(value: float) -> int:
    """Nearest even integer >= 2 (4:2:0 chroma needs even sizes)."""
    return max(2, int(round(value / 2)) * 2)


def output_fps(source_fps: float) -> float:
    """Frame rate kept as is up to 60 fps, capped above."""
    return min(source_fps, MAX_FPS) if source_fps > 0 else 30.0


def h264_level(width: int, height: int, fps: float) -> int:
    """The smallest H.264 level that allows this frame size and rate."""
    frame_mbs = math.ceil(width / 16) * math.ceil(height / 16)
    mbps = frame_mbs * fps
    for level, max_mbps, max_fs in _LEVELS:
        longest_side_ok = max(width, height) <= math.sqrt(8 * max_fs) * 16
        if frame_mbs <= max_fs and mbps <= max_mbps and longest_side_ok:
            return level
    return _LEVELS[-1][0]


def ladder(width: int, height: int, fps: float) -> list[Rendition]:
    """Renditions for a source displayed at ``width`` x ``height`` (rotation applied).

    360p and 720p, plus 1080p when the source has it; never upscaled: a source whose
    short side is below a rung gets its own size as the top rung instead. The "p" value
    is the short side, so portrait video stays portrait.
    """
    if width <= 0 or height <= 0:
        raise ValueError("video dimensions must be positive")
    short = min(width, height)
    fps = output_fps(fps)
    ps = [p for p in RUNGS if p <= short]
    if short < RUNGS[-1] and short not in ps:
        ps.append(_even(short) if short >= 2 else 2)
    rungs = []
    for p in ps:
        scale = min(1.0, p / short)
        w, h = _even(width * scale), _even(height * scale)
        base = _MAXRATE.get(p) or _interpolated_maxrate(p)
        maxrate = int(base * 1.5) if fps > 30.5 else base
        rungs.append(Rendition(p, w, h, fps, maxrate, h264_level(w, h, fps)))
    return rungs


def _interpolated_maxrate(p: int) -> int:
    """Peak bitrate for an off-ladder rung, proportional to its pixel count."""
    return max(100_000, int(_MAXRATE[720] * (p / 720) ** 2))


def next_boundary(start: float, first_pts: float) -> float:
    """The time of the segment boundary after ``start`` (seconds, source timeline).

    Boundaries depend only on time, so every rendition is cut at the same frames and
    their keyframes line up: first_pts + 1 s, then multiples of 4 s from first_pts.
    """
    rel = start - first_pts
    if rel < FIRST_SEGMENT_SECONDS:
        return first_pts + FIRST_SEGMENT_SECONDS
    return first_pts + (math.floor(rel / SEGMENT_SECONDS + 1e-9) + 1) * SEGMENT_SECONDS


def segment_name(index: int) -> str:
    return f"seg{index:05d}.m4s"


def master_playlist(renditions: Sequence[Rendition], has_audio: bool) -> str:
    """The multivariant playlist, lowest rendition first (the one players start with)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for r in sorted(renditions, key=lambda r: r.p):
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={r.bandwidth(has_audio)},"
            f"RESOLUTION={r.width}x{r.height},"
            f'CODECS="{r.codecs(has_audio)}",'
            f"FRAME-RATE={r.fps:.3f}"
        )
        lines.append(f"{r.name}/{MEDIA_PLAYLIST}")
    return "\n".join(lines) + "\n"


def target_duration(durations: Sequence[float]) -> int:
    return max([int(SEGMENT_SECONDS)] + [int(round(d)) for d in durations])


def media_playlist(durations: Sequence[float], ended: bool) -> str:
    """A fMP4 media playlist of segments ``seg00000.m4s``... with these durations.

    The playlist is an EVENT playlist: while the transcode runs it only grows, and the
    final one carries #EXT-X-ENDLIST.
    """
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{target_duration(durations)}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",  # must not change once served; ENDLIST closes it
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{INIT_NAME}"',
    ]
    for index, duration in enumerate(durations):
        lines.append(f"#EXTINF:{duration:.6f},")
        lines.append(segment_name(index))
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
