"""Pure parts of the edge: URLs, DIDs, negotiation, keys, ranges, DID documents, SSRF."""

from __future__ import annotations

import pytest
from atcdn.core import did as dids
from atcdn.core.cid import compute
from atcdn.core.ranges import RangeNotSatisfiable, etag_matches, parse_range
from atcdn.core.resolver import document_url, pds_endpoint
from atcdn.core.ssrf import is_public_address
from atcdn.edge import urls
from atcdn.edge.presets import DEFAULT_PRESETS
from atcdn.edge.responses import blob_type

CID = compute(b"hello")
PLC = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def test_image_path_with_and_without_format() -> None:
    req = urls.parse_image_path(f"/img/feed_thumbnail/plain/{PLC}/{CID}@jpeg", DEFAULT_PRESETS)
    assert (req.preset.name, req.did, req.cid, req.fmt) == ("feed_thumbnail", PLC, CID, "jpeg")
    assert urls.parse_image_path(f"/img/avatar/plain/{PLC}/{CID}", DEFAULT_PRESETS).fmt is None


@pytest.mark.parametrize("raw", [PLC, "did%3Aplc%3Aewvi7nxzyoun6zhxrhs64oiz"])
def test_did_raw_or_percent_encoded(raw: str) -> None:
    assert urls.parse_did(raw) == PLC


def test_did_web_with_and_without_port() -> None:
    assert urls.parse_did("did:web:example.com") == "did:web:example.com"
    assert urls.parse_did("did:web:localhost%3A8080") == "did:web:localhost%3A8080"
    # the server decoded %3A once already
    assert urls.parse_did("did:web:localhost:8080") == "did:web:localhost%3A8080"
    assert dids.web_host("did:web:localhost%3A8080") == "localhost:8080"


@pytest.mark.parametrize("bad", [
    "did:plc:short", "did:plc:ewvi7nxzyoun6zhxrhs64oi1", "did:plc:EWVI7NXZYOUN6ZHXRHS64OIZ",
    "did:key:z6Mk", "did:web:", "did:web:exa mple.com", "did:web:a/b", "notadid", "",
])
def test_bad_dids(bad: str) -> None:
    with pytest.raises(urls.UrlError):
        urls.parse_did(bad)


@pytest.mark.parametrize("path", [
    f"/img/nope/plain/{PLC}/{CID}",                      # unknown preset
    f"/img/avatar/plain/{PLC}/{CID}@gif",                # unknown format
    f"/img/avatar/plain/{PLC}/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
    f"/img/avatar/plain/{PLC}/{CID[:-1]}",               # truncated CID
    f"/img/avatar/xxx/{PLC}/{CID}",
    f"/img/avatar/plain/{PLC}/{CID}/extra",
    f"/img/avatar/plain/did:foo:bar/{CID}",
])
def test_bad_image_paths(path: str) -> None:
    with pytest.raises(urls.UrlError):
        urls.parse_image_path(path, DEFAULT_PRESETS)


def test_blob_path() -> None:
    assert urls.parse_blob_path(f"/blob/{PLC}/{CID}") == urls.BlobRequest(PLC, CID)
    with pytest.raises(urls.UrlError):
        urls.parse_blob_path(f"/blob/{PLC}")


@pytest.mark.parametrize("accept, avif, expected", [
    ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", False, "webp"),
    ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", True, "avif"),
    ("image/webp;q=0, image/jpeg", False, "jpeg"),
    ("image/webp;q=0.5", False, "webp"),
    ("*/*", True, "jpeg"),
    ("", False, "jpeg"),
    ("image/png", False, "jpeg"),
])
def test_negotiate(accept: str, avif: bool, expected: str) -> None:
    assert urls.negotiate(accept, avif) == expected


def test_cache_keys_leave_out_the_did() -> None:
    key = urls.image_key(CID, "avatar", "webp")
    assert PLC not in key and CID in key and key != urls.image_key(CID, "avatar", "jpeg")
    assert urls.source_key(CID) != key
    assert urls.image_etag(CID, "avatar", "webp").startswith('"')


@pytest.mark.parametrize("path, expected", [
    (f"/img/{PLC}/{CID}", (PLC, CID)),
    (f"/img/feed_fullsize/plain/{PLC}/{CID}@jpeg", (PLC, CID)),
    (f"/img/avatar/plain/did%3Aplc%3Aewvi7nxzyoun6zhxrhs64oiz/{CID}", (PLC, CID)),
    (f"/blob/{PLC}/{CID}", (PLC, CID)),
    (f"/watch/{PLC}/{CID}/playlist.m3u8", (PLC, CID)),
    (f"/img/{PLC}", (PLC, None)),
])
def test_purge_paths(path: str, expected: tuple) -> None:
    assert urls.parse_purge_path(path) == expected


def test_purge_path_rejects_others() -> None:
    with pytest.raises(urls.UrlError):
        urls.parse_purge_path("/etc/passwd")


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-9", (0, 10)),
    ("bytes=90-", (90, 100)),
    ("bytes=-10", (90, 100)),
    ("bytes=95-200", (95, 100)),
    ("bytes=100-", RangeNotSatisfiable),
    ("bytes=-0", RangeNotSatisfiable),
    ("bytes=0-1,5-6", None),
    ("items=0-1", None),
    ("bytes=5-1", None),
    ("bytes=abc", None),
])
def test_parse_range(header: str, expected: object) -> None:
    if expected is RangeNotSatisfiable:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 100)
    else:
        assert parse_range(header, 100) == expected


def test_etag_matching() -> None:
    assert etag_matches('"a", "b"', '"b"') and etag_matches("*", '"x"')
    assert etag_matches('W/"b"', '"b"') and not etag_matches('"c"', '"b"')


@pytest.mark.parametrize("sniffed, safe", [
    ("image/jpeg", "image/jpeg"), ("video/mp4", "video/mp4"),
    (None, "application/octet-stream"), ("text/html", "application/octet-stream"),
    ("image/svg+xml", "application/octet-stream"), ("application/xml", "application/octet-stream"),
])
def test_blob_type(sniffed: str | None, safe: str) -> None:
    content_type, extra = blob_type(sniffed)
    assert content_type == safe
    assert (b"content-security-policy", b"default-src 'none'; sandbox") in extra
    attachment = (b"content-disposition", b"attachment") in extra
    assert attachment == (safe == "application/octet-stream")


def test_did_documents() -> None:
    doc = {"id": PLC, "service": [
        {"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": "https://l"},
        {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
         "serviceEndpoint": "https://pds.example/"}]}
    assert pds_endpoint(doc, PLC) == "https://pds.example"
    assert pds_endpoint({**doc, "id": "did:plc:other"}, PLC) is None
    assert pds_endpoint({"id": PLC, "service": "x"}, PLC) is None
    assert document_url(PLC, "https://plc.directory/") == f"https://plc.directory/{PLC}"
    assert document_url("did:web:example.com", "") == "https://example.com/.well-known/did.json"
    assert document_url("did:web:localhost%3A99", "") == "http://localhost:99/.well-known/did.json"


@pytest.mark.parametrize("ip, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fc00::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:10.0.0.1", False), ("2002:7f00:1::", False),
])
def test_public_addresses(ip: str, public: bool) -> None:
    assert is_public_address(ip) is public


def test_memory_tier_is_a_byte_budgeted_lru(tmp_path) -> None:
    from atcdn.edge.cache import MemoryTier, make_entry

    touched: list[str] = []
    memory = MemoryTier(250, touch=touched.append)
    for key in ("a", "b"):
        memory.put(key, make_entry('"e"', "image/jpeg", 100, body=b"x" * 100))
    assert memory.get("a") is not None  # a is now the most recent
    memory.put("c", make_entry('"e"', "image/jpeg", 100, body=b"x" * 100))
    assert memory.get("b") is None and memory.get("a") and memory.get("c")
    assert memory.used == 200
    memory.put("huge", make_entry('"e"', "image/jpeg", 1000, body=b"x" * 1000))
    assert memory.get("huge") is None  # over the whole budget: never kept
    big = tmp_path / "big"
    big.write_bytes(b"y" * 5000)
    memory = MemoryTier(10_000, touch=touched.append)  # a file entry is charged 1 KB
    memory.put("file", make_entry('"e"', "image/jpeg", 5000, path=str(big)))
    assert memory.get("file") is not None and touched == ["file"]
    big.unlink()  # evicted by the disk tier
    assert memory.get("file") is None
