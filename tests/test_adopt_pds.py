"""An origin adopting the reference PDS's own blobstore, with an edge in front.

The reference PDS (tests/pds, 0.4 line) runs twice: with its disk blobstore, and with its
S3 blobstore in a real SeaweedFS bucket (its own ``PDS_BLOBSTORE_S3_*`` variables). Blobs
are uploaded through the PDS (images and a video); the origin serves them from the PDS's
files without a copy; the edge's PDS fallback is off, so whatever it serves came through
the origin. A takedown through the PDS admin API (the PDS moves the blob to quarantine)
must stop the origin serving it within 30 s with the default scan interval.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from atcdn.core import cid as cids

from tests.helpers.clips import make_clip
from tests.helpers.env import TOKEN
from tests.helpers.nodes import Edge, Origin, start_edge
from tests.helpers.pds import running_pds, take_down_blob
from tests.helpers.sample_images import ALPHA, PHOTO

pytestmark = pytest.mark.timeout(900)

BOUND = 30.0  # seconds a PDS takedown may take to stop the origin (the bound)
# Bytes no other blob has, one per test that takes a blob down.
DOWN_AT_ORIGIN = PHOTO.data + b"\0origin"
DOWN_AT_EDGE = PHOTO.data + b"\0edge"
SHARED = ALPHA.data + b"\0shared"


@dataclass
class Adoption:
    kind: str  # "disk" or "s3"
    pds_url: str
    admin_password: str
    did: str
    blobs: dict[str, tuple[str, bytes]]  # file name -> (cid, bytes)
    origin: Origin
    edge: Edge
    plant: Callable[[str, bytes], None]  # plant(key, data): a file the PDS did not write

    def cid(self, name: str) -> str:
        return self.blobs[name][0]


def files_for(tmp: Path) -> list[Path]:
    media = {"photo.jpg": PHOTO.data, "alpha.png": ALPHA.data,
             "down-origin.jpg": DOWN_AT_ORIGIN, "down-edge.jpg": DOWN_AT_EDGE,
             "shared.png": SHARED}
    paths = []
    for name, data in media.items():
        (tmp / name).write_bytes(data)
        paths.append(tmp / name)
    paths.append(make_clip(tmp / "clip.mp4", width=320, height=240, seconds=2.0, audio=False))
    return paths


@pytest.fixture(scope="module", params=["disk", "s3"])
def adoption(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adoption]:
    tmp = tmp_path_factory.mktemp(f"adopt-{request.param}")
    files = files_for(tmp)
    origin_env = {}
    if request.param == "disk":
        location = tmp / "blocks"  # the installer's /pds/blocks
        pds_env = {"PDS_BLOBSTORE_DISK_LOCATION": str(location)}
        origin_env = {"ATCDN_ORIGIN_STORE": "pds-disk",
                      "ATCDN_ORIGIN_PDS_BLOBSTORE": str(location)}

        def plant(key: str, data: bytes) -> None:
            path = location / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    else:
        seaweed = request.getfixturevalue("seaweed")
        bucket = f"pds-{uuid.uuid4().hex[:12]}"
        client = s3_client(seaweed)
        client.create_bucket(Bucket=bucket)
        pds_env = {"PDS_BLOBSTORE_S3_BUCKET": bucket, "PDS_BLOBSTORE_S3_REGION": "us-east-1",
                   "PDS_BLOBSTORE_S3_ENDPOINT": seaweed.endpoint,
                   "PDS_BLOBSTORE_S3_FORCE_PATH_STYLE": "true",
                   "PDS_BLOBSTORE_S3_ACCESS_KEY_ID": seaweed.access_key,
                   "PDS_BLOBSTORE_S3_SECRET_ACCESS_KEY": seaweed.secret_key}
        origin_env = {**seaweed.origin_env(bucket), "ATCDN_ORIGIN_STORE": "pds-s3"}

        def plant(key: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=key, Body=data)

    with running_pds(tmp, files, env=pds_env) as info:
        by_file = {Path(b["file"]).name: b["cid"] for b in info["blobs"]}
        blobs = {p.name: (by_file[p.name], p.read_bytes()) for p in files}
        # The origin starts after the uploads: its first listing finds them.
        origin = Origin(tmp / "origin", origin_env, tmp / "origin.log")
        origin.start()
        try:
            edge = start_edge(origin.url, tmp / "edge", tmp / "edge.log",
                              env={"ATCDN_PLC_URL": info["plcUrl"], "ATCDN_PDS_FALLBACK": "0"})
            try:
                yield Adoption(request.param, info["pdsUrl"], info["adminPassword"],
                               info["did"], blobs, origin, edge, plant)
            finally:
                edge.proc.stop()
        finally:
            origin.stop()


def s3_client(seaweed):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=seaweed.endpoint, region_name="us-east-1",
                        aws_access_key_id=seaweed.access_key,
                        aws_secret_access_key=seaweed.secret_key,
                        config=Config(s3={"addressing_style": "path"}))


def get(url: str, **params: str) -> httpx.Response:
    return httpx.get(url, params=params, timeout=60.0)


def wait_until(check: Callable[[], bool], what: str, bound: float = BOUND) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < bound, f"{what}: not within {bound}s"
        time.sleep(0.25)
    return time.monotonic() - started


def test_every_blob_is_served_byte_identical_through_the_edge(adoption: Adoption) -> None:
    assert len(adoption.blobs) == 6
    for name, (cid, data) in adoption.blobs.items():
        res = get(f"{adoption.edge.url}/blob/{adoption.did}/{cid}")
        assert res.status_code == 200, (name, res.text[:300])
        assert res.content == data, name
        assert cids.compute(res.content) == cid
    # Types are sniffed from the bytes (the S3 objects carry none).
    expected = {"photo.jpg": "image/jpeg", "alpha.png": "image/png", "clip.mp4": "video/mp4"}
    for name, mime in expected.items():
        res = get(f"{adoption.origin.url}/blob/{adoption.cid(name)}", did=adoption.did)
        assert res.status_code == 200 and res.headers["content-type"] == mime, name
    health = get(f"{adoption.origin.url}/health").json()
    assert health["store"] == f"pds-{adoption.kind}"


def test_ranges_and_raw_video_come_from_the_pds_files(adoption: Adoption) -> None:
    cid, data = adoption.blobs["clip.mp4"]
    res = httpx.get(f"{adoption.origin.url}/blob/{cid}", headers={"Range": "bytes=100-1099"})
    assert res.status_code == 206 and res.content == data[100:1100]


def test_writes_are_refused(adoption: Adoption) -> None:
    data = b"not through the origin"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for res in (httpx.put(f"{adoption.origin.url}/blob/{cids.compute(data)}", content=data,
                          headers=auth),
                httpx.post(f"{adoption.origin.url}/blob", content=data, headers=auth),
                httpx.post(f"{adoption.origin.url}/blob", content=data)):
        assert res.status_code == 405
        body = res.json()
        assert body["error"] == "ReadOnlyStore"
        assert "adopted PDS blobstore" in body["message"] and "read-only" in body["message"]
    assert get(f"{adoption.origin.url}/blob/{cids.compute(data)}").status_code == 404


def test_a_blob_is_served_only_for_accounts_holding_it(adoption: Adoption) -> None:
    cid = adoption.cid("shared.png")
    stranger = "did:plc:" + "z" * 24
    assert get(f"{adoption.origin.url}/blob/{cid}", did=adoption.did).status_code == 200
    res = get(f"{adoption.origin.url}/blob/{cid}", did=stranger)
    assert res.status_code == 404 and res.json()["error"] == "BlobNotFound"
    # (An edge that cached the bytes serves them under any DID: its cache is per CID.)


def test_a_second_account_uploading_the_same_bytes_holds_it_too(adoption: Adoption) -> None:
    """Same CID under two DIDs: found under the new one at once (no listing yet)."""
    cid, data = adoption.blobs["shared.png"]
    bob = create_account(adoption.pds_url, f"bob{uuid.uuid4().hex[:6]}.test")
    blob = post_blob(adoption.pds_url, bob, data, "image/png")
    assert blob["ref"]["$link"] == cid
    res = get(f"{adoption.origin.url}/blob/{cid}", did=bob["did"])
    assert res.status_code == 200 and res.content == data
    res = get(f"{adoption.edge.url}/blob/{bob['did']}/{cid}")
    assert res.status_code == 200 and res.content == data


@pytest.mark.parametrize("folder", ["tempt", "tmp", "quarantine"])
def test_files_outside_the_accounts_are_never_served(adoption: Adoption, folder: str) -> None:
    data = f"planted in {folder} of the {adoption.kind} blobstore".encode()
    cid = cids.compute(data)
    adoption.plant(f"{folder}/{adoption.did}/{cid}", data)
    time.sleep(1.0)
    for url in (f"{adoption.origin.url}/blob/{cid}",
                f"{adoption.origin.url}/blob/{cid}?did={adoption.did}",
                f"{adoption.edge.url}/blob/{adoption.did}/{cid}"):
        res = httpx.get(url)
        # 404, or 451 once a planted quarantine file is taken for a takedown: never 200.
        assert res.status_code in (404, 451), url
        assert res.json()["error"]


def test_a_pds_takedown_stops_the_origin_within_30s(adoption: Adoption) -> None:
    cid, data = adoption.blobs["down-origin.jpg"]
    url = f"{adoption.origin.url}/blob/{cid}"
    assert get(url, did=adoption.did).content == data
    assert get(url).status_code == 200

    take_down_blob(adoption.pds_url, adoption.admin_password, adoption.did, cid)
    stopped = wait_until(lambda: get(url, did=adoption.did).status_code in (404, 451),
                         "origin stops serving the quarantined blob")
    assert get(url).status_code in (404, 451)
    # Then the scanner records the takedown: 451 for that account's copy.
    wait_until(lambda: get(url, did=adoption.did).status_code == 451,
               "origin records the takedown")
    assert get(url, did=adoption.did).json()["error"] == "TakenDown"
    assert get(url).status_code in (404, 451)
    print(f"{adoption.kind}: stopped serving {stopped:.1f}s after the PDS takedown")

    take_down_blob(adoption.pds_url, adoption.admin_password, adoption.did, cid, applied=False)
    wait_until(lambda: get(url, did=adoption.did).status_code == 200,
               "origin serves the blob again after the PDS reverses the takedown")
    assert get(url, did=adoption.did).content == data


def test_a_pds_takedown_reaches_an_edge_that_cached_the_blob(adoption: Adoption) -> None:
    cid, data = adoption.blobs["down-edge.jpg"]
    url = f"{adoption.edge.url}/blob/{adoption.did}/{cid}"
    assert get(url).content == data
    assert get(url).status_code == 200  # in the edge's caches now
    take_down_blob(adoption.pds_url, adoption.admin_password, adoption.did, cid)
    wait_until(lambda: get(url).status_code in (404, 410, 451),
               "edge stops serving the quarantined blob", bound=BOUND + 15)
    img = f"{adoption.edge.url}/img/feed_thumbnail/plain/{adoption.did}/{cid}@jpeg"
    assert get(img).status_code in (404, 410, 451)


# -- a second account, through the PDS's own API --------------------------------------


def xrpc(base: str, method: str, token: str | None = None, **kw) -> dict:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    res = httpx.post(f"{base}/xrpc/{method}", headers=headers, timeout=30, **kw)
    assert res.status_code == 200, f"{method}: {res.status_code} {res.text}"
    return res.json()


def create_account(base: str, handle: str) -> dict:
    return xrpc(base, "com.atproto.server.createAccount",
                json={"handle": handle, "email": f"{handle}@example.com", "password": "pw-" + handle})


def post_blob(base: str, account: dict, data: bytes, mime: str) -> dict:
    """Upload ``data`` and reference it from a post (an unreferenced blob is never made
    permanent); the blob ref."""
    token = account["accessJwt"]
    blob = xrpc(base, "com.atproto.repo.uploadBlob", token, content=data,
                headers={"content-type": mime})["blob"]
    xrpc(base, "com.atproto.repo.createRecord", token, json={
        "repo": account["did"], "collection": "app.bsky.feed.post",
        "record": {"$type": "app.bsky.feed.post", "text": "same bytes",
                   "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                   "embed": {"$type": "app.bsky.embed.images",
                             "images": [{"alt": "", "image": blob}]}}})
    return blob
