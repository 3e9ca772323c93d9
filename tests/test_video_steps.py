"""The steps of edge/video.py's PIPELINE, run directly (no server): which frames are kept,
where segments start, and a whole transcode in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from atcdn.core.errors import AtcdnError
from atcdn.core.limits import VideoLimits
from atcdn.edge import hls
from atcdn.edge.transcode_files import META_NAME, STATE_NAME, THUMBNAIL_NAME, VideoError
from atcdn.edge.video import Transcode, cap_rate, cut_keyframes, transcode

from tests.helpers.clips import make_clip


def kept_frames(times: list[float]) -> list[tuple[float, bool]]:
    """(time, keyframe) of the frames the rate cap keeps, as encode_held holds them."""
    job = Transcode(None, Path(), Path(), VideoLimits())
    kept = []
    for t in times:
        job.frame, job.time = object(), t
        cap_rate(job)
        if job.frame is None:
            continue
        cut_keyframes(job)
        kept.append((t, job.key))
        job.held, job.held_time = (job.frame, job.key), t
    return kept


def test_segments_start_on_the_grid() -> None:
    """First segment 1 s, then every 4 s: the first frame at or after each boundary."""
    frames = kept_frames([i / 30 for i in range(int(9.5 * 30))])
    assert [round(t, 3) for t, key in frames if key] == [0.0, 1.0, 4.0, 8.0]
    jittery = kept_frames([0.0, 0.99, 1.02, 3.9, 4.05, 7.97, 8.1])
    assert [t for t, key in jittery if key] == [0.0, 1.02, 4.05, 8.1]


def test_rate_cap_drops_duplicates_reordered_and_over_60_fps() -> None:
    frames = kept_frames([i / 120 for i in range(240)])  # 2 s at 120 fps
    assert 115 <= len(frames) <= 121
    gaps = [b - a for (a, _), (b, _) in zip(frames, frames[1:])]
    assert min(gaps) >= 0.9 / hls.MAX_FPS
    assert [t for t, _ in kept_frames([0.0, 0.0, 0.5, 0.4, -0.1, 1.0])] == [0.0, 0.5, 1.0]


def test_a_whole_transcode_in_process(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2, fps=30)
    out = tmp_path / "out"
    out.mkdir()
    seconds = transcode(source, out, VideoLimits(threads=1))
    assert seconds == pytest.approx(2.0, abs=0.05)
    assert json.loads((out / STATE_NAME).read_text())["state"] == "done"
    meta = json.loads((out / META_NAME).read_text())
    assert (meta["width"], meta["height"], meta["has_audio"]) == (640, 360, True)
    assert (out / THUMBNAIL_NAME).read_bytes()[:3] == b"\xff\xd8\xff"
    playlist = (out / "360p" / hls.MEDIA_PLAYLIST).read_text()
    assert playlist.count("#EXTINF:") == 2 and playlist.endswith("#EXT-X-ENDLIST\n")
    assert (out / hls.MASTER_PLAYLIST).exists()


def test_probe_refuses_before_decoding(tmp_path: Path) -> None:
    """A source over a limit is refused by the first step: nothing else is written."""
    source = make_clip(tmp_path / "clip.mp4", seconds=1, audio=False)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(VideoError) as refused:
        transcode(source, out, VideoLimits(max_pixels=640 * 360 - 1))
    assert isinstance(refused.value, AtcdnError)
    assert (refused.value.status, refused.value.error) == (422, "TooManyPixels")
    assert sorted(p.name for p in out.iterdir()) == []
