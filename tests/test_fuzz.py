"""Property-based fuzzing of running servers: generated paths, headers, Range, Accept and
admin JSON bodies against a real origin and a real edge. Whatever arrives, the answer is
never a 5xx other than the deliberate 502/503/504, every error is JSON with its name, and
the servers are still healthy afterwards."""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

import httpx
import pytest
from atcdn.core.cid import compute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.env import TOKEN
from tests.helpers.nodes import running_origin, start_edge
from tests.helpers.pictures import DID, photo

DELIBERATE = {502, 503, 504}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_origin(tmp) as origin:
        data = photo(640, 480)
        cid = compute(data)
        assert httpx.put(f"{origin.url}/blob/{cid}", params={"did": DID}, content=data,
                         headers={"authorization": f"Bearer {TOKEN}"}).status_code in (200, 201)
        edge = start_edge(origin.url, tmp / "cache", tmp / "edge.log",
                          env={"ATCDN_PDS_FALLBACK": "0"})
        try:
            yield origin, edge, cid
        finally:
            assert httpx.get(edge.url + "/health").status_code == 200, edge.proc.tail()
            assert httpx.get(origin.url + "/health").status_code == 200
            edge.proc.stop()


def raw_request(base: str, method: str, target: str, headers: dict[str, str],
                body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send exactly this request line and these headers (no client-side normalising)."""
    host, port = base.split("://", 1)[1].split(":")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    got = {k.strip().lower(): v.strip() for k, v in
           (line.split(":", 1) for line in header_lines if ":" in line)}
    return int(status_line.split()[1]), got, payload


def check(status: int, headers: dict[str, str], body: bytes | None, what: str) -> None:
    """``body`` is None for HEAD (no body to read)."""
    assert status < 500 or status in DELIBERATE, f"{what} -> {status}: {body!r:.300}"
    if body is not None and status >= 400 and headers.get("content-type", "").startswith("application/json"):
        if "chunked" in headers.get("transfer-encoding", ""):
            return
        error = json.loads(body)
        assert isinstance(error.get("error"), str) and error["error"], (what, body)


segment = st.one_of(
    st.sampled_from(["", ".", "..", "%00", "%2F", "did:plc:" + "a" * 24, "did%3Aplc%3Aaaaa",
                     "did:web:localhost", "@webp", "plain", "avatar", "feed_thumbnail",
                     "bafkreiaaaa", "x" * 300]),
    st.text(min_size=0, max_size=40).map(lambda t: quote(t, safe="@:%")),
)


@st.composite
def edge_paths(draw, cid: str) -> str:
    kind = draw(st.sampled_from(["img", "blob", "watch", "admin", "other"]))
    pick = lambda valid: draw(st.one_of(st.just(valid), segment))  # noqa: E731
    if kind == "img":
        fmt = draw(st.sampled_from(["", "@jpeg", "@webp", "@png", "@avif", "@gif", "@", "@@"]))
        return (f"/img/{pick('avatar')}/{pick('plain')}/{pick(DID)}/{pick(cid)}{fmt}")
    if kind == "blob":
        return f"/blob/{pick(DID)}/{pick(cid)}"
    if kind == "watch":
        return (f"/watch/{pick(quote(DID, safe=''))}/{pick(cid)}/"
                f"{draw(st.sampled_from(['playlist.m3u8', 'thumbnail.jpg', '360p/video.m3u8', 'x']))}")
    parts = draw(st.lists(segment, min_size=1, max_size=6))
    return "/" + "/".join(parts)


header_values = st.one_of(
    st.sampled_from(["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=0-1,3-4", "bytes=9-1",
                     "bytes=99999999999999999999-", "bytes=", "items=0-1", "bytes=-0",
                     "image/avif,image/webp;q=0.9,*/*;q=0.1", "image/*;q=abc", "*/*",
                     '"x"', "W/\"x\"", "*", ";;;,,,"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
)


@given(data=st.data())
@FUZZ
def test_edge_survives_generated_requests(nodes, data) -> None:
    _, edge, cid = nodes
    path = data.draw(edge_paths(cid))
    headers = {name: data.draw(header_values) for name in
               data.draw(st.sets(st.sampled_from(["Range", "Accept", "If-None-Match",
                                                  "If-Range", "Accept-Encoding"])))}
    method = data.draw(st.sampled_from(["GET", "GET", "HEAD", "POST", "OPTIONS"]))
    status, got, body = raw_request(edge.url, method, path, headers)
    check(status, got, body if method != "HEAD" else None, f"{method} {path} {headers}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)


@given(data=st.data())
@FUZZ
def test_admin_routes_survive_generated_bodies(nodes, data) -> None:
    origin, edge, cid = nodes
    base, path = data.draw(st.sampled_from([
        (edge.url, "/admin/purge"), (edge.url, "/admin/takedown"), (edge.url, "/admin/restore"),
        (origin.url, "/admin/takedown"), (origin.url, "/admin/restore")]))
    body = data.draw(st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({}, optional={"did": st.one_of(st.just(DID), st.text(max_size=40)),
                                            "cid": st.one_of(st.just(cid), st.text(max_size=60)),
                                            "restore": st.booleans(),
                                            "reason": st.text(max_size=50)})
        .map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=100)))
    token = data.draw(st.sampled_from([TOKEN, "wrong", ""]))
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, got, answer = raw_request(base, "POST", path, headers, body)
    check(status, got, answer, f"POST {base}{path} {body!r}")
    if token != TOKEN:
        assert status in (401, 403, 404, 405), (path, status, answer)


@given(data=st.data())
@FUZZ
def test_origin_survives_generated_requests(nodes, data) -> None:
    origin, _, cid = nodes
    path = data.draw(st.one_of(
        st.builds(lambda c, d: f"/blob/{c}?did={quote(d)}", st.one_of(st.just(cid), segment),
                  st.one_of(st.just(DID), st.text(max_size=40))),
        st.builds(lambda c, d: f"/xrpc/com.atproto.sync.getBlob?cid={quote(c)}&did={quote(d)}",
                  st.one_of(st.just(cid), st.text(max_size=60)),
                  st.one_of(st.just(DID), st.text(max_size=40))),
        segment.map(lambda s: "/" + s)))
    headers = {name: data.draw(header_values) for name in
               data.draw(st.sets(st.sampled_from(["Range", "If-None-Match"])))}
    method = data.draw(st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]))
    status, got, body = raw_request(origin.url, method, path, headers)
    check(status, got, body if method != "HEAD" else None, f"{method} {path} {headers}")
