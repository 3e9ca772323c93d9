"""The ladder, levels, segment boundaries and playlist text (pure, no I/O)."""

from __future__ import annotations

import pytest
from atcdn.edge import hls


def names(width: int, height: int, fps: float = 30) -> list[str]:
    return [r.name for r in hls.ladder(width, height, fps)]


@pytest.mark.parametrize(("size", "expected"), [
    ((1920, 1080), ["360p", "720p", "1080p"]),
    ((3840, 2160), ["360p", "720p", "1080p"]),
    ((1280, 720), ["360p", "720p"]),
    ((854, 480), ["360p", "480p"]),  # never upscaled: its own height as the top rung
    ((640, 360), ["360p"]),
    ((160, 120), ["120p"]),
    ((8, 8), ["8p"]),
    ((1080, 1920), ["360p", "720p", "1080p"]),  # portrait: "p" is the short side
    ((642, 642), ["360p", "642p"]),
])
def test_ladder_rungs(size: tuple[int, int], expected: list[str]) -> None:
    assert names(*size) == expected


def test_ladder_keeps_aspect_and_orientation() -> None:
    sizes = [(r.width, r.height) for r in hls.ladder(2160, 3840, 60)]
    assert sizes == [(360, 640), (720, 1280), (1080, 1920)]
    for r in hls.ladder(1080, 720, 30):
        assert r.width > r.height and r.width % 2 == 0 and r.height % 2 == 0


def test_ladder_never_upscales() -> None:
    for w, h in [(854, 480), (642, 642), (640, 428), (1080, 720), (8, 8), (3840, 2160)]:
        for r in hls.ladder(w, h, 30):
            assert r.width <= w and r.height <= h


def test_fps_kept_up_to_60() -> None:
    assert hls.ladder(1920, 1080, 59.94)[0].fps == 59.94
    assert hls.ladder(1920, 1080, 120)[0].fps == 60
    assert hls.ladder(1920, 1080, 24)[0].fps == 24


def test_h264_levels() -> None:
    assert hls.h264_level(640, 360, 30) == 30
    assert hls.h264_level(1280, 720, 30) == 31
    assert hls.h264_level(1280, 720, 60) == 32
    assert hls.h264_level(1920, 1080, 30) == 40
    assert hls.h264_level(1920, 1080, 60) == 42
    assert hls.h264_level(1080, 1920, 60) == 42


def test_codecs_string() -> None:
    r = hls.ladder(1280, 720, 30)[-1]
    assert r.codecs(has_audio=True) == "avc1.64001f,mp4a.40.2"
    assert r.codecs(has_audio=False) == "avc1.64001f"


def test_boundaries_are_a_fixed_grid() -> None:
    assert hls.next_boundary(0.0, 0.0) == 1.0
    assert hls.next_boundary(1.0, 0.0) == 4.0
    assert hls.next_boundary(1.033, 0.0) == 4.0
    assert hls.next_boundary(4.0, 0.0) == 8.0
    assert hls.next_boundary(4.02, 0.0) == 8.0
    assert hls.next_boundary(7.99, 0.0) == 8.0


def test_master_playlist() -> None:
    text = hls.master_playlist(hls.ladder(1920, 1080, 30), has_audio=True)
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in lines
    infs = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    assert len(infs) == 3
    assert infs[0] == ('#EXT-X-STREAM-INF:BANDWIDTH=1128000,RESOLUTION=640x360,'
                       'CODECS="avc1.64001e,mp4a.40.2",FRAME-RATE=30.000')
    assert "RESOLUTION=1920x1080" in infs[2] and "avc1.640028" in infs[2]
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == ["360p/index.m3u8", "720p/index.m3u8", "1080p/index.m3u8"]


def test_media_playlist_growing_then_ended() -> None:
    growing = hls.media_playlist([1.0, 3.0], ended=False)
    assert '#EXT-X-MAP:URI="init.mp4"' in growing
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in growing
    assert "#EXT-X-ENDLIST" not in growing
    assert growing.count("#EXTINF:") == 2
    assert "#EXTINF:3.000000,\nseg00001.m4s" in growing
    ended = hls.media_playlist([1.0, 3.0, 4.0, 2.5], ended=True)
    assert ended.rstrip().endswith("#EXT-X-ENDLIST")
    assert ended.startswith(growing.split("#EXTINF")[0])  # the header never changes
    assert "#EXT-X-TARGETDURATION:4" in ended


def test_target_duration_covers_long_segments() -> None:
    assert hls.target_duration([1.0, 3.0, 4.0]) == 4
    assert hls.target_duration([4.6]) == 5
