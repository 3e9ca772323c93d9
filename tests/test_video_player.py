"""Every video plays to the end in real headless Chromium with hls.js from npm.

One Chromium (driven by playwright-core, tests/player/play.mjs) plays each video from a
real /watch server at 16x; the page reports frames decoded, duration and size.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clips import make_clip, make_gif
from tests.helpers.env import CORPUS, corpus_files, need, need_tool
from tests.helpers.npm import npm_package
from tests.helpers.watch import WatchServer, probe_source

PLAYER = Path(__file__).resolve().parent / "player"
pytestmark = pytest.mark.timeout(900)

GENERATED = {
    "clip_audio.mp4": lambda p: make_clip(p, seconds=9.5),
    "clip_rotated.mp4": lambda p: make_clip(p, rotation=90, audio=False),
    "anim.gif": make_gif,
}
VIDEOS = [*GENERATED, *(p.name for p in corpus_files("video"))]




@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    """Play every video once; results by file name."""
    need_tool("ffprobe")
    need_tool("chromium")
    npm_package("player")
    work = tmp_path_factory.mktemp("player")
    server = WatchServer(work / "node", static=PLAYER).start()
    try:
        sources: dict[str, Path] = {}
        for name, make in GENERATED.items():
            sources[name] = make(work / name)
        for path in corpus_files("video"):
            sources[path.name] = path
        urls = {name: server.video_url(server.add(path.read_bytes())) + "/playlist.m3u8"
                for name, path in sources.items()}
        run = subprocess.run(
            ["node", str(PLAYER / "play.mjs"), server.static_url + "/player.html",
             json.dumps(list(urls.values()))],
            cwd=PLAYER, capture_output=True, text=True, timeout=800)
        assert run.returncode == 0, run.stderr[-3000:]
        results = {r["src"]: r for r in json.loads(run.stdout.strip().splitlines()[-1])}
        yield {name: results[url] | {"source": sources[name]} for name, url in urls.items()}
    finally:
        server.stop()


@pytest.mark.parametrize("name", VIDEOS)
def test_plays_to_the_end(played: dict[str, dict], name: str) -> None:
    if name not in GENERATED:
        need(CORPUS.is_dir(), f"corpus not found at {CORPUS}")
    result = played[name]
    assert result["ok"], result
    assert result["frames"] > 0  # frames decoded
    source = probe_source(result["source"])
    assert abs(result["duration"] - source.duration) <= 0.5, (result, source)
    if source.width != source.height:  # shown upright, portrait stays portrait
        assert (result["width"] > result["height"]) == (source.width > source.height)
