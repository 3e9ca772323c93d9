"""MIME sniffing from bytes only."""

from __future__ import annotations

import io

import pytest
from atcdn.core.mime import OCTET_STREAM, is_active, sniff
from PIL import Image


def image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                           ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_images(fmt: str, mime: str) -> None:
    assert sniff(image_bytes(fmt)) == mime


@pytest.mark.parametrize(("head", "mime"), [
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script/></svg>',
     "image/svg+xml"),
    (b"\n  <svg onload=alert(1)>", "image/svg+xml"),
    (b"<!DOCTYPE html><html><body>hi", "text/html"),
    (b"<script>alert(1)</script>", "text/html"),
    (b'<?xml version="1.0"?><feed/>', "application/xml"),
    (b"", OCTET_STREAM),
    (b"just some text", OCTET_STREAM),
    (bytes(range(256)), OCTET_STREAM),
])
def test_text_and_unknown(head: bytes, mime: str) -> None:
    assert sniff(head) == mime


def test_active_types() -> None:
    assert is_active("image/svg+xml") and is_active("text/html")
    assert not is_active("image/png")
