"""The edge against the reference PDS: images that live only on a real PDS (0.4 line,
with its own local PLC directory) are fetched through an edge whose origin has no copy.

tests/pds/harness.js runs the PDS and PLC (see there); this module starts it, an empty
origin and an edge as real processes, once for the module (the PDS boot is the slow part).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import pytest
from atcdn.core import cid as cids
from PIL import Image

from tests.helpers.nodes import Origin, start_edge
from tests.helpers.npm import npm_package
from tests.helpers.pds import read_harness_line, take_down_blob
from tests.helpers.sample_images import (
    ALPHA,
    BLUE,
    PHOTO,
    PRESETS,
    RED,
    SAMPLES,
    Sample,
)
from tests.helpers.servers import Process

# The first run installs tests/pds from its lockfile (compiling better-sqlite3): minutes.
pytestmark = pytest.mark.timeout(900)

SANDBOX = "default-src 'none'; sandbox"
# A blob the PDS never saw: a well-formed CID of other bytes.
UNKNOWN_CID = cids.compute(b"never uploaded")
# Blobs one test each uses, so no other test brings them into the edge or the origin first.
HANDOFF = Sample("handoff", PHOTO.data + b"\0", "image/jpeg", PHOTO.sizes)
TAKEN_DOWN = Sample("takedown", PHOTO.data + b"\0\0", "image/jpeg", PHOTO.sizes)


class Peers:
    """What the harness printed: the PLC and PDS URLs, the account, the uploaded blobs."""

    def __init__(self, info: dict, files: dict[str, Sample]) -> None:
        self.plc_url: str = info["plcUrl"]
        self.pds_url: str = info["pdsUrl"]
        self.admin_password: str = info["adminPassword"]
        self.did: str = info["did"]
        # sample name -> (cid, mimeType) as the PDS answered uploadBlob
        self.blobs = {files[b["file"]].name: (b["cid"], b["mimeType"]) for b in info["blobs"]}

    def cid(self, sample: Sample) -> str:
        return self.blobs[sample.name][0]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    folder = npm_package("pds")
    tmp = tmp_path_factory.mktemp("pds")
    files: dict[str, Sample] = {}
    for sample in (*SAMPLES, HANDOFF, TAKEN_DOWN):
        path = tmp / f"{sample.name}.{sample.mime.split('/')[1].replace('jpeg', 'jpg')}"
        path.write_bytes(sample.data)
        files[str(path)] = sample
    log = tmp / "harness.log"
    proc = Process(["node", str(folder / "harness.js"), str(tmp / "data"), *files],
                   log=log, cwd=folder)
    try:
        yield Peers(read_harness_line(proc, log), files)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def origin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("origin")
    origin = Origin(tmp / "origin", {}, tmp / "origin.log")
    origin.start()
    try:
        yield origin.url
    finally:
        origin.stop()


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory, peers: Peers,
             origin_url: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("edge")
    edge = start_edge(origin_url, tmp / "cache", tmp / "edge.log",
                      env={"ATCDN_PLC_URL": peers.plc_url, "ATCDN_PDS_FALLBACK": "1"})
    try:
        yield edge.url
    finally:
        edge.proc.stop()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=60.0)


# -- the reference PDS itself: the facts in DESIGN.md the edge relies on ----------------


def test_pds_get_blob_answers_as_documented(peers: Peers) -> None:
    cid = peers.cid(PHOTO)
    url = f"{peers.pds_url}/xrpc/com.atproto.sync.getBlob?did={peers.did}&cid={cid}"
    res = httpx.get(url, headers={"Range": "bytes=0-9"})
    # Range is ignored: always 200 with the whole, unchanged body.
    assert res.status_code == 200
    assert res.content == PHOTO.data
    assert cids.compute(res.content) == cid
    assert res.headers["content-type"] == "image/jpeg"
    assert res.headers["cache-control"] == "private"
    assert res.headers["content-security-policy"] == SANDBOX
    assert res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["content-disposition"].startswith("attachment")


def test_pds_unknown_blob_or_repo_is_400(peers: Peers) -> None:
    base = f"{peers.pds_url}/xrpc/com.atproto.sync.getBlob"
    res = httpx.get(base, params={"did": peers.did, "cid": UNKNOWN_CID})
    assert res.status_code == 400
    assert res.json() == {"error": "InvalidRequest", "message": "Blob not found"}
    res = httpx.get(base, params={"did": "did:plc:" + "a" * 24, "cid": peers.cid(PHOTO)})
    assert res.status_code == 400
    assert res.json()["error"] == "RepoNotFound"


def test_plc_document_names_the_pds(peers: Peers) -> None:
    doc = httpx.get(f"{peers.plc_url}/{peers.did}").json()
    services = {s["id"]: s for s in doc["service"]}
    pds = services["#atproto_pds"]
    assert pds["type"] == "AtprotoPersonalDataServer"
    assert pds["serviceEndpoint"] == peers.pds_url


def test_pds_lists_the_referenced_blobs(peers: Peers) -> None:
    res = httpx.get(f"{peers.pds_url}/xrpc/com.atproto.sync.listBlobs",
                    params={"did": peers.did, "limit": 1000})
    assert sorted(res.json()["cids"]) == sorted(cid for cid, _ in peers.blobs.values())


# -- the edge, its origin empty, pulling from the PDS ----------------------------------


def test_edge_hands_verified_pds_bytes_to_the_origin(peers: Peers, origin_url: str,
                                                     edge_url: str) -> None:
    cid = peers.cid(HANDOFF)
    assert get(f"{origin_url}/blob/{cid}").status_code == 404

    res = get(f"{edge_url}/blob/{peers.did}/{cid}")
    assert res.status_code == 200
    assert res.content == HANDOFF.data

    # The hand-off may happen after the answer: wait for it, boundedly.
    deadline = time.monotonic() + 30
    while (stored := get(f"{origin_url}/blob/{cid}")).status_code == 404:
        assert time.monotonic() < deadline, "the origin never received the blob"
        time.sleep(0.2)
    assert stored.status_code == 200
    assert stored.content == HANDOFF.data


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_raw_blob_through_edge(peers: Peers, edge_url: str, sample: Sample) -> None:
    res = get(f"{edge_url}/blob/{peers.did}/{peers.cid(sample)}")
    assert res.status_code == 200
    assert res.content == sample.data
    assert res.headers["content-type"] == sample.mime
    assert res.headers["content-security-policy"] == SANDBOX
    assert res.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_image_through_edge(peers: Peers, edge_url: str, sample: Sample, preset: str) -> None:
    res = get(f"{edge_url}/img/{preset}/plain/{peers.did}/{peers.cid(sample)}@jpeg")
    assert res.status_code == 200, res.text[:500]
    assert res.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(res.content))
    assert image.format == "JPEG"
    assert image.size == sample.sizes[preset]


def test_photo_is_upright(peers: Peers, edge_url: str) -> None:
    """EXIF orientation 6 applied: the red half of the stored image ends up on top."""
    res = get(f"{edge_url}/img/download/plain/{peers.did}/{peers.cid(PHOTO)}@png")
    image = Image.open(io.BytesIO(res.content)).convert("RGB")
    width, height = image.size
    assert (width, height) == (1200, 1600)
    assert near(image.getpixel((width // 2, height // 4)), RED)
    assert near(image.getpixel((width // 2, 3 * height // 4)), BLUE)


def test_png_keeps_transparency(peers: Peers, edge_url: str) -> None:
    res = get(f"{edge_url}/img/feed_fullsize/plain/{peers.did}/{peers.cid(ALPHA)}@png")
    assert res.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(res.content)).convert("RGBA")
    assert image.getpixel((150, 150))[3] == 255
    assert abs(image.getpixel((450, 150))[3] - 128) <= 2


def test_unknown_cid_is_404(peers: Peers, edge_url: str) -> None:
    """The PDS says 400 for a blob it lacks; the edge says what it means: 404."""
    for path in (f"/blob/{peers.did}/{UNKNOWN_CID}",
                 f"/img/avatar/plain/{peers.did}/{UNKNOWN_CID}@jpeg"):
        res = get(edge_url + path)
        assert res.status_code == 404, path
        assert res.json()["error"]


def test_blob_taken_down_on_the_pds_is_404(peers: Peers, edge_url: str) -> None:
    """A PDS takedown answers 400 like a missing blob; the edge, never having had the
    blob, says 404."""
    cid = peers.cid(TAKEN_DOWN)
    take_down_blob(peers.pds_url, peers.admin_password, peers.did, cid)
    res = httpx.get(f"{peers.pds_url}/xrpc/com.atproto.sync.getBlob",
                    params={"did": peers.did, "cid": cid})
    assert res.status_code == 400
    assert res.json()["message"] == "Blob not found"
    for path in (f"/blob/{peers.did}/{cid}", f"/img/feed_thumbnail/plain/{peers.did}/{cid}"):
        res = get(edge_url + path)
        assert res.status_code == 404, path
        assert res.json()["error"]


def near(pixel: tuple[int, ...], color: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color))
