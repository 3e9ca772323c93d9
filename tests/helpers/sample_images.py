"""Images generated in code for the real-peer tests, with the renditions they must give.

Two sources cover what a browser and a PDS round trip can get wrong: a sideways phone
photo (EXIF orientation 6) and a PNG with transparency. The expected sizes follow the
preset rules (``cover`` crops to the box's aspect, ``inside`` fits; neither upscales),
worked out by hand here rather than by the edge's own code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
GREEN = (20, 200, 20)


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    mime: str
    # preset -> (width, height) of the rendition
    sizes: dict[str, tuple[int, int]]


def sideways_photo() -> bytes:
    """Stored 1600x1200, left half red and right half blue, EXIF orientation 6 (rotate
    90° clockwise to display): upright it is 1200x1600, red on top, blue below."""
    image = Image.new("RGB", (1600, 1200), BLUE)
    image.paste(RED, (0, 0, 800, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, exif=exif)
    return out.getvalue()


def alpha_png() -> bytes:
    """600x300: left half opaque green, right half half-transparent blue."""
    image = Image.new("RGBA", (600, 300), (*GREEN, 255))
    image.paste((*BLUE, 128), (300, 0, 600, 300))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


PHOTO = Sample("photo", sideways_photo(), "image/jpeg", {
    "avatar": (1000, 1000),          # centre 1200x1200 crop, scaled down
    "avatar_thumbnail": (128, 128),
    "banner": (1200, 400),           # 3:1 crop at source scale (no upscaling to 3000)
    "feed_thumbnail": (1200, 1600),  # fits 2000x2000 already
    "feed_fullsize": (750, 1000),
    "download": (1200, 1600),
})

ALPHA = Sample("alpha", alpha_png(), "image/png", {
    "avatar": (300, 300),
    "avatar_thumbnail": (128, 128),
    "banner": (600, 200),
    "feed_thumbnail": (600, 300),
    "feed_fullsize": (600, 300),
    "download": (600, 300),
})

SAMPLES = (PHOTO, ALPHA)
PRESETS = tuple(PHOTO.sizes)
