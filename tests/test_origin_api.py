"""The origin HTTP API against real origin processes, on both backends."""

from __future__ import annotations

import io
import os
import random
import signal
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from PIL import Image

from tests.helpers.env import ADMIN_TOKEN, TOKEN
from tests.helpers.nodes import Origin, running_origin

MAX = 4 * 1024 * 1024  # small limit so 413 is cheap to provoke
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module", params=["fs", "s3"])
def origin_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    seaweed = request.getfixturevalue("seaweed") if request.param == "s3" else None
    with running_origin(tmp_path_factory.mktemp(f"origin-{request.param}"),
                        backend=request.param, seaweed=seaweed,
                        env={"ATCDN_ORIGIN_MAX_BLOB_BYTES": str(MAX)}) as origin:
        origin.backend = request.param  # type: ignore[attr-defined]
        yield origin


@pytest.fixture
def client(origin_server: Origin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=origin_server.url, timeout=30.0) as client:
        yield client


def put(client: httpx.Client, data: bytes, cid: str | None = None, **params: str) -> httpx.Response:
    return client.put(f"/blob/{cid or compute(data)}", content=data, headers=AUTH, params=params)


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] and body["message"]
    return body


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


def test_round_trip_get_head_getblob(client: httpx.Client) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    cid = compute(data)
    created = put(client, data)
    assert created.status_code == 201
    assert created.json()["cid"] == cid and created.json()["size"] == len(data)
    assert put(client, data).status_code == 200  # idempotent

    got = client.get(f"/blob/{cid}")
    assert got.status_code == 200 and got.content == data
    headers = got.headers
    assert headers["etag"] == f'"{cid}"'
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-length"] == str(len(data))
    assert headers["content-type"] == "application/octet-stream"

    head = client.head(f"/blob/{cid}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["etag"] == f'"{cid}"'

    xrpc = client.get("/xrpc/com.atproto.sync.getBlob",
                      params={"did": "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "cid": cid})
    assert xrpc.status_code == 200 and xrpc.content == data


def test_content_type_is_sniffed(client: httpx.Client) -> None:
    image = png()
    assert put(client, image).json()["mimeType"] == "image/png"
    assert client.get(f"/blob/{compute(image)}").headers["content-type"] == "image/png"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    put(client, svg)
    got = client.get(f"/blob/{compute(svg)}")
    assert got.headers["content-type"] == "image/svg+xml"
    assert got.headers["content-disposition"] == "attachment"


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-0", 0, 1), ("bytes=100-1099", 100, 1100), ("bytes=1048570-", 1048570, None),
    ("bytes=-500", -500, None), ("bytes=5-99999999", 5, None)])
def test_single_range(client: httpx.Client, header: str, start: int, end: int | None) -> None:
    data = os.urandom(2 * 1024 * 1024)
    put(client, data)
    got = client.get(f"/blob/{compute(data)}", headers={"Range": header})
    expected = data[start:end]
    assert got.status_code == 206 and got.content == expected
    first = start if start >= 0 else len(data) + start
    assert got.headers["content-range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert got.headers["content-length"] == str(len(expected))


def test_unsatisfiable_and_multi_range(client: httpx.Client) -> None:
    data = os.urandom(1000)
    cid = compute(data)
    put(client, data)
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        got = client.get(f"/blob/{cid}", headers={"Range": header})
        assert_error(got, 416)
        assert got.headers["content-range"] == "bytes */1000"
    multi = client.get(f"/blob/{cid}", headers={"Range": "bytes=0-1,5-6"})
    assert multi.status_code == 200 and multi.content == data


def test_if_none_match_304(client: httpx.Client) -> None:
    data = b"conditional"
    cid = compute(data)
    put(client, data)
    for tag in (f'"{cid}"', f'W/"{cid}"', f'"other", "{cid}"', "*"):
        got = client.get(f"/blob/{cid}", headers={"If-None-Match": tag})
        assert got.status_code == 304 and got.content == b""
        assert got.headers["etag"] == f'"{cid}"'
    assert client.get(f"/blob/{cid}", headers={"If-None-Match": '"x"'}).status_code == 200


def test_mismatched_body_is_422_and_not_stored(client: httpx.Client) -> None:
    claimed = compute(b"what the client says")
    body = b"what the client sends" + os.urandom(8)
    assert_error(put(client, body, cid=claimed), 422)
    assert_error(client.get(f"/blob/{claimed}"), 404)
    assert_error(client.get(f"/blob/{compute(body)}"), 404)
    assert "atcdn_origin_verification_failures_total" in client.get("/metrics").text


@pytest.mark.parametrize("bad", ["bafkbad", "Qmc5gCcjYypU7y28oCALwfSvxCBskLuPKWpK4qpterKC7z",
                                 "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                                 "b" + "a" * 58])
def test_malformed_cid_is_400(client: httpx.Client, bad: str) -> None:
    assert assert_error(client.get(f"/blob/{bad}"), 400)["error"] == "InvalidCid"
    assert_error(client.put(f"/blob/{bad}", content=b"x", headers=AUTH), 400)
    assert_error(client.get("/xrpc/com.atproto.sync.getBlob", params={"cid": bad}), 400)


def test_unknown_blob_404_and_routing_errors_are_json(client: httpx.Client) -> None:
    assert_error(client.get(f"/blob/{compute(b'nobody stored this')}"), 404)
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.delete(f"/blob/{compute(b'x')}"), 405)
    assert_error(client.get("/xrpc/com.atproto.sync.getBlob"), 400)
    assert_error(client.get(f"/blob/{compute(b'x')}", params={"did": "not-a-did"}), 400)


def test_missing_or_wrong_token_is_401(client: httpx.Client) -> None:
    data = b"needs a token"
    cid = compute(data)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert_error(client.put(f"/blob/{cid}", content=data, headers=headers), 401)
        assert_error(client.post("/blob", content=data, headers=headers), 401)
        assert_error(client.post("/admin/takedown", json={"cid": cid}, headers=headers), 401)
    assert_error(client.get(f"/blob/{cid}"), 404)


def test_oversized_body_is_413(client: httpx.Client) -> None:
    data = os.urandom(MAX + 1)
    cid = compute(data)
    # Declared too large: refused from the headers alone.
    try:
        response = put(client, data)
        assert_error(response, 413)
    except httpx.TransportError:
        pass  # the server may close before the client finished sending: also a refusal

    # Undeclared length (chunked): refused while counting the stream.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    try:
        response = client.put(f"/blob/{cid}", content=chunks(), headers=AUTH)
        assert_error(response, 413)
    except httpx.TransportError:
        pass
    assert_error(client.get(f"/blob/{cid}"), 404)
    # Exactly at the limit is fine.
    assert put(client, data[:MAX]).status_code in (200, 201)


def test_post_blob_like_upload_blob(client: httpx.Client) -> None:
    image = png() + os.urandom(4)  # unique bytes, still a PNG by its header
    response = client.post("/blob", content=image, headers=AUTH)
    assert response.status_code == 201
    body = response.json()
    assert body["cid"] == compute(image) and body["size"] == len(image)
    assert body["mimeType"] == "image/png"
    assert body["blob"]["ref"] == {"$link": body["cid"]}
    assert client.post("/blob", content=image, headers=AUTH).status_code == 200
    assert client.get(f"/blob/{body['cid']}").content == image


def test_takedown_and_restore_by_cid(client: httpx.Client) -> None:
    data = os.urandom(100)
    cid = compute(data)
    put(client, data)
    assert client.post("/admin/takedown", json={"cid": cid}, headers=ADMIN).status_code == 200
    assert_error(client.get(f"/blob/{cid}"), 451)
    assert client.head(f"/blob/{cid}").status_code == 451
    assert_error(client.get("/xrpc/com.atproto.sync.getBlob",
                            params={"cid": cid, "did": "did:plc:" + "a" * 24}), 451)
    assert client.post("/admin/restore", json={"cid": cid}, headers=ADMIN).status_code == 200
    assert client.get(f"/blob/{cid}").content == data  # bytes were kept
    assert_error(client.post("/admin/takedown", json={"cid": "nope"}, headers=ADMIN), 400)
    assert_error(client.post("/admin/takedown", json={}, headers=ADMIN), 400)
    assert_error(client.post("/admin/takedown", content=b"{", headers=ADMIN), 400)


def test_takedown_by_did(client: httpx.Client) -> None:
    alice, bob = "did:plc:" + "".join(random.choices(string.ascii_lowercase + "234567", k=24)), "did:web:bob.example.com"
    shared, only_alice = os.urandom(64), os.urandom(64)
    put(client, shared, did=alice)
    put(client, shared, did=bob)
    put(client, only_alice, did=alice)
    assert client.post("/admin/takedown", json={"did": alice}, headers=ADMIN).status_code == 200
    # Asked for through the taken-down DID: withheld.
    assert_error(client.get(f"/blob/{compute(shared)}", params={"did": alice}), 451)
    assert_error(client.get("/xrpc/com.atproto.sync.getBlob",
                            params={"did": alice, "cid": compute(only_alice)}), 451)
    # Through another DID, or without a DID while another referrer is live: served.
    assert client.get(f"/blob/{compute(shared)}", params={"did": bob}).status_code == 200
    assert client.get(f"/blob/{compute(shared)}").status_code == 200
    # Without a DID, a blob whose every referrer is taken down: withheld.
    assert_error(client.get(f"/blob/{compute(only_alice)}"), 451)
    client.post("/admin/restore", json={"did": alice}, headers=ADMIN)
    assert client.get(f"/blob/{compute(only_alice)}").content == only_alice


def test_concurrent_puts_of_one_cid(client: httpx.Client, origin_server: Origin) -> None:
    data = os.urandom(1024 * 1024)
    statuses: list[int] = []

    def writer() -> None:
        with httpx.Client(base_url=origin_server.url, timeout=60.0) as own:
            statuses.append(put(own, data).status_code)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(statuses) <= {200, 201} and len(statuses) == 6 and 201 in statuses
    if origin_server.backend == "fs":  # type: ignore[attr-defined]
        assert statuses.count(201) == 1
    assert client.get(f"/blob/{compute(data)}").content == data


def test_health_and_metrics(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    data = os.urandom(2000)
    put(client, data)
    client.get(f"/blob/{compute(data)}")
    text = client.get("/metrics").text
    assert 'atcdn_origin_requests_total{method="PUT",route="/blob/{cid}"' in text
    assert 'route="/blob/{cid}",status="200"' in text
    assert "atcdn_origin_bytes_in_total" in text and "atcdn_origin_bytes_out_total" in text


def test_no_token_configured_refuses_every_write(tmp_path: Path) -> None:
    with running_origin(tmp_path, env={"ATCDN_ORIGIN_TOKEN": ""}) as origin:
        data = b"x"
        response = httpx.put(f"{origin.url}/blob/{compute(data)}", content=data, headers=AUTH)
        assert_error(response, 403)
        assert_error(httpx.post(f"{origin.url}/blob", content=data, headers=AUTH), 403)


def test_metrics_sum_across_workers(tmp_path: Path) -> None:
    with running_origin(tmp_path, env={"ATCDN_ORIGIN_WORKERS": "2"}) as origin:
        for _ in range(20):
            httpx.get(f"{origin.url}/health")  # new connections spread over workers
        text = httpx.get(f"{origin.url}/metrics").text
        line = next(line for line in text.splitlines()
                    if line.startswith('atcdn_origin_requests_total{method="GET",route="/health"'))
        assert float(line.split()[-1]) >= 20


@pytest.mark.parametrize("backend", ["fs", "s3"])
def test_kill_mid_upload_leaves_nothing_partial(request: pytest.FixtureRequest, tmp_path: Path,
                                                backend: str) -> None:
    seaweed = request.getfixturevalue("seaweed") if backend == "s3" else None
    with running_origin(tmp_path, backend=backend, seaweed=seaweed) as origin:
        kept = os.urandom(300_000)
        assert put(httpx.Client(base_url=origin.url), kept).status_code == 201
        big = os.urandom(1024 * 1024) * 64  # 64 MiB, repeated to save time making it
        big_cid = compute(big)
        sent = threading.Event()
        outcome: list[object] = []

        def body() -> Iterator[bytes]:
            for i in range(0, len(big), 1024 * 1024):
                if i >= 8 * 1024 * 1024:
                    sent.set()
                    time.sleep(0.05)  # trickle so the kill lands mid-body
                yield big[i:i + 1024 * 1024]

        def upload() -> None:
            try:
                outcome.append(httpx.put(f"{origin.url}/blob/{big_cid}", content=body(),
                                         headers={**AUTH, "Content-Length": str(len(big))},
                                         timeout=60.0))
            except httpx.HTTPError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=upload)
        thread.start()
        assert sent.wait(30)
        staged = origin.data_dir / "tmp"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                p.stat().st_size > 0 for p in staged.glob("upload-*.part")):
            time.sleep(0.05)
        origin.stop(signal.SIGKILL)
        thread.join(60)
        assert outcome and isinstance(outcome[0], httpx.HTTPError)  # never completed

        origin.start()  # same data dir and port
        with httpx.Client(base_url=origin.url, timeout=30.0) as client:
            assert_error(client.get(f"/blob/{big_cid}"), 404)
            assert client.get(f"/blob/{compute(kept)}").content == kept
        if backend == "fs":
            stored = [p.name for p in (origin.data_dir / "blobs").rglob("*") if p.is_file()]
            assert stored == [compute(kept)]
        else:
            import boto3

            env = origin.env
            s3 = boto3.client("s3", endpoint_url=env["ATCDN_ORIGIN_S3_ENDPOINT"],
                              region_name="us-east-1",
                              aws_access_key_id=seaweed.access_key,
                              aws_secret_access_key=seaweed.secret_key)
            listing = s3.list_objects_v2(Bucket=env["ATCDN_ORIGIN_S3_BUCKET"])
            assert [o["Key"] for o in listing.get("Contents", [])] == ["blobs/" + compute(kept)]
