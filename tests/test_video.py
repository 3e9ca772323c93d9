"""/watch end to end against a real server process: transcodes checked with ffprobe,
HTTP semantics, refusals, single-flight, the queue, restarts.

Generated clips (tests/clips.py) make this run without the corpus; the corpus videos
and corrupt videos run when ../shared/corpus is there (and must, in strict mode).
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers.clips import make_clip, make_gif
from tests.helpers.env import corpus_files, need_tool
from tests.helpers.watch import DID, WatchServer, check_hls, probe_source

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatchServer]:
    need_tool("ffprobe")
    srv = WatchServer(tmp_path_factory.mktemp("watch")).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as c:
        yield c


def transcode_and_check(server: WatchServer, client: httpx.Client, path: Path, work: Path):
    cid = server.add(path.read_bytes())
    response = client.get(server.video_url(cid) + "/playlist.m3u8")
    assert response.status_code == 200, response.text
    assert server.wait_done(cid)["state"] == "done"
    return cid, check_hls(client, server.video_url(cid), probe_source(path), work)


CLIPS = {
    "640x360_audio": dict(width=640, height=360, seconds=9.5),
    "640x360_no_audio": dict(width=640, height=360, audio=False),
    "rotated_90": dict(width=640, height=360, rotation=90, audio=False),
    "vp9_webm": dict(width=320, height=240, codec="libvpx-vp9", audio=False, seconds=1),
}


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_generated_clip(server: WatchServer, client: httpx.Client, tmp_path: Path,
                        name: str) -> None:
    suffix = ".webm" if "webm" in name else ".mp4"
    path = make_clip(tmp_path / f"{name}{suffix}", **CLIPS[name])
    cid, probes = transcode_and_check(server, client, path, tmp_path)
    if name == "rotated_90":  # shown upright: portrait
        assert all(p.variant.height > p.variant.width for p in probes)
        thumb = client.get(server.video_url(cid) + "/thumbnail.jpg")
        assert Image.open(io.BytesIO(thumb.content)).size[1] > Image.open(
            io.BytesIO(thumb.content)).size[0]
    if name == "640x360_audio":
        assert [round(d, 2) for d in probes[0].durations] == [1.0, 3.0, 4.0, 1.5]


def test_animated_gif_becomes_h264(server: WatchServer, client: httpx.Client,
                                   tmp_path: Path) -> None:
    path = make_gif(tmp_path / "anim.gif")
    cid, probes = transcode_and_check(server, client, path, tmp_path)
    assert [p.variant.height for p in probes] == [120]
    status = client.get(server.video_url(cid) + "/status").json()
    assert status["meta"]["loop"] is True


@pytest.mark.parametrize("path", corpus_files("video"), ids=lambda p: p.name)
def test_corpus_video(corpus: Path, server: WatchServer, client: httpx.Client,
                      tmp_path: Path, path: Path) -> None:
    transcode_and_check(server, client, path, tmp_path)


def _corrupt_generated(tmp_path: Path) -> dict[str, bytes]:
    clip = make_clip(tmp_path / "whole.mp4", seconds=2).read_bytes()
    return {
        "truncated.mp4": clip[: len(clip) // 2],
        "garbage.mp4": bytes(range(256)) * 64,
        "text.txt": b"hello, this is not a video\n" * 10,
        "image.png": _png(),
    }


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, format="PNG")
    return out.getvalue()


def _expect_refusal(server: WatchServer, client: httpx.Client, data: bytes) -> None:
    cid = server.add(data)
    for route in ("/playlist.m3u8", "/thumbnail.jpg", "/360p/index.m3u8"):
        response = client.get(server.video_url(cid) + route)
        assert 400 <= response.status_code < 500, (route, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["error"] and body["message"]
    assert client.get(server.video_url(cid) + "/status").json()["state"] == "failed"
    assert client.get(server.url + "/health").status_code == 200  # the edge stays up


def test_text_is_415_on_watch_as_on_img(server: WatchServer, client: httpx.Client) -> None:
    """Not media at all: the same 415 on /watch as on /img; a broken video stays 422."""
    cid = server.add(b"hello, this is not a video\n" * 10)
    watch = client.get(server.video_url(cid) + "/playlist.m3u8")
    img = client.get(f"{server.url}/img/avatar/plain/{DID}/{cid}@jpeg")
    assert watch.status_code == img.status_code == 415, (watch.text, img.text)
    assert watch.json()["error"] == "UnsupportedMedia"


@pytest.mark.parametrize("name", ["truncated.mp4", "garbage.mp4", "text.txt", "image.png"])
def test_bad_generated_input(server: WatchServer, client: httpx.Client, tmp_path: Path,
                             name: str) -> None:
    _expect_refusal(server, client, _corrupt_generated(tmp_path)[name])


@pytest.mark.parametrize("path", corpus_files("video-corrupt"), ids=lambda p: p.name)
def test_corpus_corrupt_video(corpus: Path, server: WatchServer, client: httpx.Client,
                              path: Path) -> None:
    _expect_refusal(server, client, path.read_bytes())


def test_http_semantics(server: WatchServer, client: httpx.Client, tmp_path: Path) -> None:
    path = make_clip(tmp_path / "http.mp4", seconds=2)
    cid = server.add(path.read_bytes())
    base = server.video_url(cid)
    encoded = f"{server.url}/watch/{DID.replace(':', '%3A')}/{cid}"
    assert client.get(encoded + "/playlist.m3u8").status_code == 200  # DID percent-encoded
    server.wait_done(cid)
    for route, kind in [("/playlist.m3u8", "application/vnd.apple.mpegurl"),
                        ("/360p/index.m3u8", "application/vnd.apple.mpegurl"),
                        ("/360p/init.mp4", "video/mp4"),
                        ("/360p/seg00000.m4s", "video/iso.segment"),
                        ("/thumbnail.jpg", "image/jpeg")]:
        response = client.get(base + route)
        assert response.status_code == 200
        assert response.headers["content-type"] == kind
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        etag = response.headers["etag"]
        assert cid in etag
        again = client.get(base + route, headers={"If-None-Match": etag})
        assert again.status_code == 304
        part = client.get(base + route, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == response.content[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(response.content)}"
    status = client.get(base + "/status").json()
    assert status["state"] == "done" and status["progress"] == 100
    thumb = Image.open(io.BytesIO(client.get(base + "/thumbnail.jpg").content))
    assert thumb.size == (640, 360)


def test_bad_requests(server: WatchServer, client: httpx.Client) -> None:
    cid = server.add(b"never transcoded")
    cases = [
        (f"{server.url}/watch/not-a-did/{cid}/playlist.m3u8", 400),
        (f"{server.url}/watch/{DID}/bafybad/playlist.m3u8", 400),
        (f"{server.url}/watch/{DID}/{'bafkrei' + 'a' * 52}/playlist.m3u8", 404),  # no such blob
        (f"{server.video_url(cid)}/360p/../../x", 404),
        (f"{server.video_url(cid)}/360p/evil.m4s", 404),
    ]
    for url, status in cases:
        response = client.get(url)
        assert response.status_code == status, (url, response.text)
        if response.headers.get("content-type") == "application/json":
            assert response.json()["error"]


def test_growing_playlist_and_single_flight(server: WatchServer, tmp_path: Path) -> None:
    """Many viewers at once: one transcode on the node; playlists grow, then end."""
    path = make_clip(tmp_path / "herd.mp4", width=1280, height=720, seconds=14)
    cid = server.add(path.read_bytes())
    base = server.video_url(cid)
    results: list[int] = []

    def viewer() -> None:
        with httpx.Client(timeout=60) as c:
            results.append(c.get(base + "/playlist.m3u8").status_code)

    threads = [threading.Thread(target=viewer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8
    with httpx.Client(timeout=60) as c:
        first = c.get(base + "/360p/index.m3u8")
        assert first.status_code == 200
        if "#EXT-X-ENDLIST" not in first.text:  # still growing: short cache
            assert first.headers["cache-control"] == "public, max-age=1"
        assert "#EXTINF" in first.text  # never an empty playlist
        server.wait_done(cid)
        final = c.get(base + "/360p/index.m3u8")
        assert final.text.startswith(first.text.split("#EXT-X-ENDLIST")[0])  # it only grew
    assert server.starts(cid) == 1


def test_restart_discards_interrupted_transcode(tmp_path: Path) -> None:
    need_tool("ffprobe")
    srv = WatchServer(tmp_path / "node", workers=1).start()
    path = make_clip(tmp_path / "long.mp4", width=1280, height=720, seconds=16)
    cid = srv.add(path.read_bytes())
    folder = srv.cache / "video" / cid
    try:
        with httpx.Client(timeout=60) as c:
            assert c.get(srv.video_url(cid) + "/360p/index.m3u8").status_code == 200
        assert not (folder / "done").exists()
        srv.stop(signal.SIGKILL)  # server and transcoder die mid-way
        time.sleep(0.5)
        assert not (folder / "done").exists()
        srv.start()
        with httpx.Client(timeout=60) as c:
            state = c.get(srv.video_url(cid) + "/status").json()["state"]
            assert state in ("absent", "queued", "running")
            assert c.get(srv.video_url(cid) + "/playlist.m3u8").status_code == 200
            assert srv.wait_done(cid)["state"] == "done"
            check_hls(c, srv.video_url(cid), probe_source(path), tmp_path)
        assert srv.starts(cid) == 2
        srv.stop()
        srv.start()  # a finished transcode survives restarts: served, not redone
        with httpx.Client(timeout=60) as c:
            response = c.get(srv.video_url(cid) + "/playlist.m3u8")
            assert response.status_code == 200
            assert response.headers["cache-control"].endswith("immutable")
        assert srv.starts(cid) == 2
    finally:
        srv.stop()


def test_queue_full_answers_429(tmp_path: Path) -> None:
    srv = WatchServer(tmp_path / "node", workers=1, video_max_concurrent=1,
                      video_queue_length=1).start()
    cids = [srv.add(make_clip(tmp_path / f"q{i}.mp4", seconds=10 + i).read_bytes())
            for i in range(3)]
    codes: dict[int, int] = {}

    def request(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            codes[i] = c.get(srv.video_url(cids[i]) + "/playlist.m3u8").status_code

    def wait_state(cid: str, states: tuple[str, ...]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if httpx.get(srv.video_url(cid) + "/status").json()["state"] in states:
                return
            time.sleep(0.05)
        raise TimeoutError(cid)

    try:
        running = threading.Thread(target=request, args=(0,))
        running.start()
        wait_state(cids[0], ("running", "done"))
        queued = threading.Thread(target=request, args=(1,))
        queued.start()
        wait_state(cids[1], ("queued",))
        full = httpx.get(srv.video_url(cids[2]) + "/playlist.m3u8", timeout=30)
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        assert full.json()["error"] == "Overloaded"
        running.join()
        queued.join()
        assert codes == {0: 200, 1: 200}
        metrics = httpx.get(srv.url + "/metrics").text
        assert "atcdn_video_transcodes_started_total" in metrics
        assert "atcdn_video_transcode_queue_length" in metrics
        assert "atcdn_video_encoded_seconds_total" in metrics
    finally:
        srv.stop()


def test_limits(tmp_path: Path) -> None:
    """Each limit is a setting; a refused source gets an honest JSON error."""
    small = make_clip(tmp_path / "small.mp4", seconds=3, audio=False).read_bytes()
    long = make_clip(tmp_path / "long.mp4", seconds=9, audio=False).read_bytes()
    srv = WatchServer(tmp_path / "limits", workers=1, video_max_seconds=2,
                      video_max_bytes=max(len(small), len(long)) - 1).start()
    try:
        with httpx.Client(timeout=60) as c:
            too_long = c.get(srv.video_url(srv.add(small)) + "/playlist.m3u8")
            assert too_long.status_code == 422 and too_long.json()["error"] == "TooLong"
            biggest = long if len(long) > len(small) else small
            too_big = c.get(srv.video_url(srv.add(biggest)) + "/playlist.m3u8")
            assert too_big.status_code == 413 and too_big.json()["error"] == "TooLarge"
    finally:
        srv.stop()
    # A child Python that imports PyAV cannot even start within 50 ms: always a timeout.
    srv = WatchServer(tmp_path / "timeout", workers=1, video_timeout=0.05).start()
    try:
        with httpx.Client(timeout=60) as c:
            cid = srv.add(long)
            c.get(srv.video_url(cid) + "/playlist.m3u8")  # may be served before the timeout
            status = srv.wait_done(cid)
            assert status["state"] == "failed" and status["error"]["error"] == "TranscodeTimeout"
            assert not (srv.cache / "video" / cid / "playlist.m3u8").exists()  # discarded
            slow = c.get(srv.video_url(cid) + "/playlist.m3u8")
            assert slow.status_code == 503, slow.text
            assert slow.json()["error"] == "TranscodeTimeout"
            assert int(slow.headers["retry-after"]) > 0
            assert c.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()


def test_takedown_reaches_a_finished_transcode(server: WatchServer, client: httpx.Client,
                                                tmp_path: Path) -> None:
    """A finished video is served from disk; a takedown must still stop it, and a restore
    must not bring back the old transcode (it was purged and is made again)."""
    from tests.helpers.env import TOKEN

    cid = server.add(make_clip(tmp_path / "clip.mp4", seconds=2, audio=False).read_bytes())
    assert client.get(server.video_url(cid) + "/playlist.m3u8").status_code == 200
    assert server.wait_done(cid)["state"] == "done"
    admin = {"Authorization": f"Bearer {TOKEN}"}
    taken = client.post(server.url + "/admin/takedown", json={"cid": cid}, headers=admin)
    assert taken.status_code == 200
    for name in ("playlist.m3u8", "thumbnail.jpg", "360p/index.m3u8", "status"):
        refused = client.get(f"{server.video_url(cid)}/{name}")
        assert refused.status_code == 451 and refused.json()["error"] == "TakenDown"
    assert not (server.cache / "video" / cid).exists()  # purged from disk too
    restored = client.post(server.url + "/admin/restore", json={"cid": cid},
                           headers=admin)
    assert restored.status_code == 200
    assert client.get(server.video_url(cid) + "/playlist.m3u8").status_code == 200
    assert server.starts(cid) == 2  # transcoded again, not resurrected from a cache


def test_takedown_stops_a_transcode_in_flight(server: WatchServer, client: httpx.Client,
                                              tmp_path: Path) -> None:
    """A takedown that arrives mid-transcode stops it: nothing of the video is on disk
    when the takedown answers, nothing appears after, and a restore transcodes anew."""
    from tests.helpers.env import TOKEN

    admin = {"Authorization": f"Bearer {TOKEN}"}
    path = make_clip(tmp_path / "long.mp4", width=1280, height=720, seconds=16, audio=False)
    cid = server.add(path.read_bytes())
    folder = server.cache / "video" / cid
    assert client.get(server.video_url(cid) + "/360p/index.m3u8").status_code == 200
    assert client.get(server.video_url(cid) + "/status").json()["state"] == "running"
    taken = client.post(server.url + "/admin/takedown", json={"cid": cid}, headers=admin)
    assert taken.status_code == 200
    assert not folder.exists()
    time.sleep(1.0)  # the killed transcoder, and its worker, leave nothing behind
    assert not folder.exists()
    restored = client.post(server.url + "/admin/restore", json={"cid": cid},
                           headers=admin)
    assert restored.status_code == 200
    assert client.get(server.video_url(cid) + "/playlist.m3u8").status_code == 200
    assert server.starts(cid) == 2
    # Taken down again, so the module's other tests do not wait behind this transcode.
    client.post(server.url + "/admin/takedown", json={"cid": cid}, headers=admin)
    assert not folder.exists()


def test_videos_stay_within_their_share_of_the_cache(tmp_path: Path) -> None:
    """Transcodes, their sources and refusals count in the cache budget: videos
    transcoded one after another never hold more than ``video_share`` of ``cache_size``;
    the least recently used go first, and a removed one is transcoded again when asked."""
    import os
    import subprocess
    import sys

    from atcdn.core.limits import VideoLimits

    clips = [make_clip(tmp_path / f"v{i}.mp4", width=160 + 16 * i, height=120, seconds=1,
                       audio=False) for i in range(5)]
    sample = tmp_path / "sample"  # what one video leaves: its output and its source
    subprocess.run([sys.executable, "-m", "atcdn.edge.video", str(clips[-1]), str(sample), "{}",
                    ""], check=True, capture_output=True)
    one = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file()) + clips[-1].stat().st_size
    budget = int(2.5 * one)  # room for two videos, not three
    srv = WatchServer(tmp_path / "node", workers=1, cache_size=budget * 100, video_share=0.01,
                      memory_max_item=VideoLimits.max_bytes)  # sources copied to video/sources
    video_dir = srv.cache / "video"

    def used() -> int:
        return sum(p.stat().st_size for p in video_dir.rglob("*")
                   if p.is_file() and "slots" not in p.parts)

    def within_budget() -> int:
        deadline = time.monotonic() + 10  # trimmed as the transcode ends
        while used() > budget and time.monotonic() < deadline:
            time.sleep(0.1)
        return used()

    srv.start()
    try:
        cids = [srv.add(path.read_bytes()) for path in clips]
        refused = srv.add(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))  # a broken MP4
        with httpx.Client(timeout=60) as c:
            for n, cid in enumerate([*cids, refused]):
                c.get(srv.video_url(cid) + "/playlist.m3u8")
                assert srv.wait_done(cid)["state"] == ("failed" if cid == refused else "done")
                assert within_budget() <= budget, (n, used(), budget)
                if n >= 1:  # the first is watched again: the second is now the oldest
                    c.get(srv.video_url(cids[0]) + "/playlist.m3u8")
            states = {cid: c.get(srv.video_url(cid) + "/status").json()["state"] for cid in cids}
            assert states[cids[0]] == "done", states  # watched all along: kept
            assert states[cids[1]] == "absent", states  # the least recently used: removed
            assert not (video_dir / "sources" / cids[1]).exists()
            assert not (video_dir / f"{cids[1]}.log").exists()
            assert c.get(srv.video_url(cids[1]) + "/playlist.m3u8").status_code == 200
            assert srv.wait_done(cids[1])["state"] == "done"
            assert within_budget() <= budget
    finally:
        srv.stop()


def test_a_strangers_videos_stay_within_its_share(tmp_path: Path, hostile,
                                                  edge_factory) -> None:
    """The attack (issue 9, hole 1): the operator's pushed videos are transcoded, then a
    stranger's DID has its own PDS (a stand-in) send videos and asks for their
    transcodes, past the video budget. The stranger's videos never hold more than its
    share of the budget, its least recently used going first; none of the operator's
    is removed."""
    import subprocess
    import sys

    from atcdn.core.cid import compute
    from atcdn.core.limits import VideoLimits

    from tests.helpers.env import TOKEN
    from tests.helpers.nodes import running_origin

    stranger = "did:plc:" + "s" * 24
    clips = [make_clip(tmp_path / f"v{i}.mp4", width=160, height=120, seconds=1, fps=20 + i,
                       audio=False) for i in range(8)]
    sample = tmp_path / "sample"  # what one video leaves: its output and its source
    subprocess.run([sys.executable, "-m", "atcdn.edge.video", str(clips[-1]), str(sample), "{}",
                    ""], check=True, capture_output=True)
    one = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file()) + clips[-1].stat().st_size
    budget = 5 * one  # the operator's three and the stranger's share, not all eight
    pds = hostile()
    pds.add_did(stranger, pds.url)
    with running_origin(tmp_path) as origin:
        mine = []
        for clip in clips[:3]:
            data = clip.read_bytes()
            httpx.put(f"{origin.url}/blob/{compute(data)}", content=data, params={"did": DID},
                      headers={"authorization": f"Bearer {TOKEN}"}).raise_for_status()
            mine.append(compute(data))
        theirs = [pds.add_blob(clip.read_bytes()) for clip in clips[3:]]
        edge = edge_factory(origin.url, env={
            "ATCDN_PLC_URL": pds.url, "ATCDN_EDGE_CACHE_SIZE": str(budget * 100),
            "ATCDN_EDGE_VIDEO_SHARE": "0.01", "ATCDN_EDGE_SHARE_DID": "0.3",
            "ATCDN_EDGE_SHARE_PDS": "0.5",
            "ATCDN_EDGE_MEMORY_MAX_ITEM": str(VideoLimits.max_bytes)})  # sources in video/
        video_dir = edge.cache_dir / "video"

        def state(did: str, cid: str) -> str:
            return httpx.get(f"{edge.url}/watch/{did}/{cid}/status", timeout=10).json()["state"]

        def transcode(did: str, cid: str) -> None:
            r = httpx.get(f"{edge.url}/watch/{did}/{cid}/playlist.m3u8", timeout=60)
            assert r.status_code in (200, 202), r.text
            deadline = time.monotonic() + 120
            while state(did, cid) not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert state(did, cid) == "done"
            time.sleep(0.5)  # trimmed as the transcode ends

        def held(cid: str) -> int:
            files = [*(video_dir / cid).rglob("*"), video_dir / "sources" / cid,
                     video_dir / f"{cid}.log", video_dir / f"{cid}.owner"]
            return sum(p.stat().st_size for p in files if p.is_file())

        for cid in mine:
            transcode(DID, cid)
        for cid in theirs:
            transcode(stranger, cid)
            assert [state(DID, c) for c in mine] == ["done"] * 3  # none of the operator's
            kept = [c for c in theirs if state(stranger, c) == "done"]
            assert sum(held(c) for c in kept) <= 0.3 * budget, (kept, budget)
        assert kept == theirs[-1:]  # its own least recently used went first
