"""What a hostile client can make an edge do (issue 9, hole 7): flood the parsed-Accept
cache, make it encode AVIF it was told not to offer, time a transform out again and
again, get raw paths reflected into an HTML-sniffable error, or get active documents
rendered inline from /blob. Real origin and edge processes."""

from __future__ import annotations

import io
import os

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.edge import urls
from atcdn.edge.presets import DEFAULT_PRESETS
from atcdn.edge.responses import blob_type
from PIL import Image, features

from tests.helpers.env import TOKEN

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
CID = compute(b"hello")


def jpeg(width: int = 320, height: int = 240) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(out, "JPEG")
    return out.getvalue() + os.urandom(8)  # unique bytes, still a JPEG


def put(origin: str, data: bytes) -> str:
    cid = compute(data)
    httpx.put(f"{origin}/blob/{cid}", content=data, params={"did": DID},
              headers={"authorization": f"Bearer {TOKEN}"}).raise_for_status()
    return cid


# -- the parsed Accept cache ------------------------------------------------------------

def test_accept_cache_is_bounded_by_entries_and_key_length() -> None:
    urls.ACCEPT_CACHE.cache_clear()
    for n in range(3000):  # 3000 distinct 20 KB Accept strings: ~60 MB if all were kept
        accept = f"image/webp,image/x-{n}," + "x" * 20_000
        assert urls.negotiate(accept) == "webp"
    assert urls.ACCEPT_CACHE.cache_info().currsize == 0  # long ones are never kept
    for n in range(3000):
        urls.negotiate(f"image/webp,image/x-{n}")
    info = urls.ACCEPT_CACHE.cache_info()
    assert info.currsize <= info.maxsize <= 4096
    assert info.maxsize * urls.MAX_CACHED_ACCEPT <= 4 * 1024 * 1024


# -- @avif when AVIF is off -------------------------------------------------------------

def test_avif_suffix_is_refused_when_avif_is_off() -> None:
    path = f"/img/feed_thumbnail/plain/{DID}/{CID}@avif"
    with pytest.raises(urls.UrlError, match="avif"):
        urls.parse_image_path(path, DEFAULT_PRESETS)
    assert urls.parse_image_path(path, DEFAULT_PRESETS, avif=True).fmt == "avif"


def test_avif_on_a_real_edge(origin: str, edge_factory) -> None:
    cid = put(origin, jpeg())
    path = f"/img/feed_thumbnail/plain/{DID}/{cid}@avif"
    off = edge_factory(origin)
    r = httpx.get(off.url + path, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "InvalidRequest", r.text
    assert off.metric("atcdn_edge_transforms_total") == 0  # nothing was encoded
    if features.check("avif"):
        on = edge_factory(origin, env={"ATCDN_EDGE_ENABLE_AVIF": "1"})
        r = httpx.get(on.url + path, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/avif"


# -- failed transforms are remembered ---------------------------------------------------

def slow_animation() -> bytes:
    """A GIF of 100 distinct 700x700 frames: seconds to re-encode as an animated WebP,
    so a 1 ms transform timeout always fires (pebble checks timeouts every 0.1 s; a
    single still image can finish inside that window)."""
    frames = [Image.new("P", (700, 700), i) for i in range(100)]
    for i, frame in enumerate(frames):
        frame.putpalette([(j * 7 + i) % 256 for j in range(768)])
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=40)
    return out.getvalue()


def test_failed_transform_is_remembered(origin: str, edge_factory) -> None:
    """Every transform times out here; asking again within the memory costs nothing."""
    cid = put(origin, slow_animation())
    edge = edge_factory(origin, env={"ATCDN_EDGE_TRANSFORM_TIMEOUT": "0.001"})
    url = f"{edge.url}/img/feed_fullsize/plain/{DID}/{cid}@webp"
    answers = [httpx.get(url, timeout=30) for _ in range(4)]
    assert [r.status_code for r in answers] == [503] * 4
    assert {r.json()["error"] for r in answers} == {"TransformTimeout"}
    assert all("(remembered)" in r.json()["message"] for r in answers[1:])
    assert edge.metric("atcdn_edge_transforms_remembered_total") == 3
    # Another rendering of the same source is its own try.
    r = httpx.get(f"{edge.url}/img/avatar/plain/{DID}/{cid}@webp", timeout=30)
    assert r.json()["error"] == "TransformTimeout"
    assert "(remembered)" not in r.json()["message"]
    assert edge.metric("atcdn_edge_transforms_remembered_total") == 3


def test_undecodable_source_is_remembered(origin: str, edge_factory) -> None:
    cid = put(origin, b"\xff\xd8\xff\xe0" + os.urandom(3000))  # a JPEG header, then noise
    edge = edge_factory(origin)
    url = f"{edge.url}/img/avatar/plain/{DID}/{cid}@webp"
    statuses = {httpx.get(url, timeout=30).status_code for _ in range(3)}
    assert statuses <= {415, 422} and len(statuses) == 1
    assert edge.metric("atcdn_edge_transforms_remembered_total") == 2


# -- error bodies -------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/img/<script>alert(1)</script>/plain/{did}/{cid}@jpeg",
    "/img/avatar/plain/{did}/<img src=x onerror=alert(1)>",
    "/blob/<svg onload=alert(1)>/{cid}",
])
def test_error_json_is_never_sniffed_as_html(edge, path: str) -> None:
    r = httpx.get(edge.url + path.format(did=DID, cid=CID), timeout=30)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert set(r.json()) == {"error", "message"}


# -- /blob inline types -------------------------------------------------------------------

def image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, fmt)
    return out.getvalue() + os.urandom(4)


@pytest.mark.parametrize("sniffed, inline", [
    ("image/jpeg", True), ("image/png", True), ("image/gif", True), ("image/webp", True),
    ("image/avif", True), ("image/heic", True), ("video/mp4", True), ("video/webm", True),
    ("video/quicktime", True),
    ("image/bmp", False), ("image/tiff", False), ("application/pdf", False),
    ("audio/mpeg", False), ("video/x-matroska", False), ("image/svg+xml", False),
    ("text/html", False), ("application/zip", False), (None, False),
])
def test_blob_type_allowlist(sniffed: str | None, inline: bool) -> None:
    content_type, extra = blob_type(sniffed)
    assert (content_type == sniffed) is inline
    assert ((b"content-disposition", b"attachment") in extra) is not inline
    if not inline:
        assert content_type == "application/octet-stream"


def test_blob_sends_bmp_tiff_pdf_as_attachments(origin: str, edge) -> None:
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + os.urandom(16)
    for data, inline in ((image_bytes("BMP"), False), (image_bytes("TIFF"), False),
                         (pdf, False), (image_bytes("PNG"), True)):
        cid = put(origin, data)
        r = httpx.get(f"{edge.url}/blob/{DID}/{cid}", timeout=30)
        assert r.status_code == 200 and r.content == data
        if inline:
            assert r.headers["content-type"] == "image/png"
            assert "content-disposition" not in r.headers
        else:
            assert r.headers["content-type"] == "application/octet-stream"
            assert r.headers["content-disposition"] == "attachment"


# -- the transform queue ------------------------------------------------------------------

def test_transform_queue_is_bounded_in_bytes(origin: str, edge_factory) -> None:
    """Sources waiting for an image worker are held in the server process: beyond
    ``ATCDN_EDGE_TRANSFORM_QUEUE_SIZE`` bytes of them, a new transform is 503 Busy."""
    import concurrent.futures
    import time

    slow = put(origin, slow_animation())
    others = [put(origin, jpeg(800, 600)) for _ in range(4)]
    edge = edge_factory(origin, env={"ATCDN_EDGE_TRANSFORM_QUEUE_SIZE": "1000",
                                     "ATCDN_EDGE_TRANSFORM_WORKERS": "1"})
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        busy = pool.submit(httpx.get, f"{edge.url}/img/feed_fullsize/plain/{DID}/{slow}@webp",
                           timeout=60)
        time.sleep(0.5)  # its source is now with the one worker
        answers = list(pool.map(lambda cid: httpx.get(
            f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg", timeout=60), others))
        # It only has to hold the worker (under load it may pass the 20 s timeout).
        assert busy.result().status_code in (200, 503)
        assert busy.result().headers["content-type"] != "application/json" or \
            busy.result().json()["error"] == "TransformTimeout"
    assert [r.status_code for r in answers] == [503] * 4, [r.text for r in answers]
    assert {r.json()["error"] for r in answers} == {"Busy"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers)
    # Nothing is remembered: once the worker is free, the same request is served.
    r = httpx.get(f"{edge.url}/img/avatar/plain/{DID}/{others[0]}@jpeg", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
