"""Pictures made and checked in code: encoders, decoders and metadata checks shared by the
image tests, and a herd of identical requests."""

from __future__ import annotations

import asyncio
import io
import resource

import httpx
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def marked(width: int, height: int) -> Image.Image:
    """Blue picture with a red top-left corner: shows where "up" and "left" went."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 3, height // 3))
    return image


def assert_no_metadata(data: bytes) -> None:
    image = decode(data)
    assert not image.getexif(), "EXIF survived"
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "comment", "Raw profile type exif"):
        assert key not in image.info, f"{key} survived"
    assert b"Exif\x00\x00" not in data
    assert b"http://ns.adobe.com/xap" not in data
    assert b"TestCam" not in data


def worker_memory() -> tuple[int, int]:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    return resource.getrlimit(resource.RLIMIT_AS)[0], peak * 1024


def photo(width: int = 2000, height: int = 1500, seed: int = 0) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, comment=f"seed {seed}".encode())  # distinct blobs
    return out.getvalue()


async def herd(url: str, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.get(url) for _ in range(n)))
