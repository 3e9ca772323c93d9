"""Every real image of ../shared/corpus through every preset; every hostile file refused.

Expected sizes are computed here from the source (opened with Pillow, turned upright with
Pillow's own ``exif_transpose``), independently of edge/image.py's planning code.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from atcdn.core.limits import ImageLimits, WorkerLimits
from atcdn.edge.image import MediaError, render
from atcdn.edge.presets import DEFAULT_PRESETS, Preset
from atcdn.edge.transform import Transformer
from PIL import Image, ImageChops, ImageOps

from tests.helpers.env import CORPUS, corpus_files
from tests.helpers.pictures import assert_no_metadata, decode, marked, worker_memory

GOOD = corpus_files("photo", "exif-orientation", "exif-gps", "animated", "format-variant")
HOSTILE = corpus_files("hostile-bomb", "hostile-corrupt", "hostile-ext-mismatch",
                       "hostile-fuzz-crasher", "hostile-svg-script", "hostile-truncated",
                       "hostile-zero-byte")
FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "avif": "AVIF"}
# Encoding multi-megapixel PNG/WebP takes seconds: those sizes are checked as JPEG (same
# decode, orientation and resize steps) and on the smaller sources in every format.
BIG = 1_500_000
# AVIF encoding is slow: a subset, one preset each.
AVIF_SUBSET = {"photo/skimage_rocket.jpg", "photo/sharp_2569067123_aca715a2ee_o.jpg",
               "exif-orientation/recurser_Portrait_6.jpg", "format-variant/sharp_5_webp_a.webp",
               "format-variant/bimg_test2.heic", "animated/pillow_iss634.gif",
               "exif-gps/ianare_gps_DSCN0010.jpg", "format-variant/sharp_CMYK_color.jpg"}


def manifest() -> dict[str, dict[str, str]]:
    path = CORPUS / "MANIFEST.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f, delimiter="\t")}


MANIFEST = manifest()


def name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def upright(source: bytes) -> Image.Image:
    with Image.open(io.BytesIO(source)) as image:
        return ImageOps.exif_transpose(image)


def expected_size(width: int, height: int, preset: Preset) -> tuple[int, int]:
    if preset.fit == "original":
        return width, height
    if preset.fit == "inside":
        ratio = min(preset.width / width, preset.height / height, 1)
        return max(1, round(width * ratio)), max(1, round(height * ratio))
    aspect = preset.width / preset.height
    crop = (height * aspect, height) if width / height > aspect else (width, width / aspect)
    if crop[0] >= preset.width:
        return preset.width, preset.height
    return max(1, round(crop[0])), max(1, round(crop[1]))


def seen(image: Image.Image) -> Image.Image:
    """A picture as a 16x16 greyscale thumbnail, transparency flattened onto white (as
    JPEG output is)."""
    if image.size == (16, 16) and image.mode == "L":
        return image
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return flat.convert("L").resize((16, 16), Image.Resampling.BOX)


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two pictures' thumbnails."""
    a, b = seen(a), seen(b)
    histogram = ImageChops.difference(a, b).histogram()
    return sum(i * n for i, n in enumerate(histogram)) / 256


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
@pytest.mark.parametrize("path", GOOD, ids=name)
def test_corpus_image_every_preset(corpus, path, fmt):
    source = path.read_bytes()
    reference = upright(source)
    width, height = reference.size
    frames = getattr(reference, "n_frames", 1)
    thumbnail = seen(reference)
    for preset in DEFAULT_PRESETS.values():
        size = expected_size(width, height, preset)
        if fmt != "jpeg" and size[0] * size[1] > BIG:
            continue
        out = render(source, preset, fmt)
        image = decode(out)
        assert image.format == FORMATS[fmt], preset.name
        assert image.size == size, preset.name
        assert_no_metadata(out)
        if preset.fit != "cover":
            # Upright: looks like Pillow's own exif_transpose of the source, not a turned
            # or mirrored version of it.
            assert difference(image, thumbnail) < 30, preset.name
        if fmt == "webp" and 1 < frames <= 300:
            assert getattr(image, "n_frames", 1) == frames, preset.name


@pytest.mark.parametrize("variant", ["Landscape", "Portrait"])
def test_corpus_orientations_agree(corpus, variant):
    """All EXIF orientations of one photo render to the same upright picture."""
    files = sorted((corpus / "exif-orientation").glob(f"recurser_{variant}_*.jpg"))
    need_files = len(files) >= 2
    if not need_files:
        pytest.skip("orientation set not in corpus")
    renders = [decode(render(f.read_bytes(), DEFAULT_PRESETS["feed_fullsize"], "png"))
               for f in files]
    for path, image in zip(files[1:], renders[1:]):
        assert image.size == renders[0].size, path.name
        assert difference(image, renders[0]) < 8, path.name
        assert difference(image.transpose(Image.Transpose.ROTATE_180), renders[0]) > 8


@pytest.mark.parametrize("path", [p for p in GOOD if name(p) in AVIF_SUBSET], ids=name)
def test_corpus_avif_subset(corpus, path):
    source = path.read_bytes()
    width, height = upright(source).size
    preset = DEFAULT_PRESETS["feed_fullsize"]
    out = render(source, preset, "avif")
    image = decode(out)
    assert image.format == "AVIF" and image.size == expected_size(width, height, preset)
    assert_no_metadata(out)


def renderable(path: Path) -> bool:
    """Files in hostile folders that are, in truth, images we render: a JPEG with a
    wrong or no extension, a PNG named .pbm, a PNG without IEND... Their honest answer is
    a picture; everything else must be refused with a 4xx."""
    row = MANIFEST.get(name(path), {})
    return ("Pillow decodes without error" in row.get("notes", "")
            and row.get("format", "") in {"JPEG", "PNG", "GIF", "WEBP", "animated GIF"})


@pytest.fixture(scope="module")
def pool() -> Iterator[Transformer]:
    transformer = Transformer(ImageLimits(), WorkerLimits(workers=1, timeout=10, memory_mb=768))
    yield transformer
    transformer.close()


def test_corpus_hostile_files_through_the_pool(corpus, pool):
    assert HOSTILE
    good = 0

    async def each() -> None:
        nonlocal good
        for path in HOSTILE:
            for preset in ("avatar_thumbnail", "feed_fullsize", "download"):
                for fmt in ("jpeg", "webp"):
                    try:
                        rendered = await pool.transform(path.read_bytes(),
                                                        DEFAULT_PRESETS[preset], fmt)
                    except MediaError as error:
                        assert 400 <= error.status < 500, (name(path), error.message)
                        continue
                    assert renderable(path), f"{name(path)} rendered"
                    assert decode(rendered.body).format == FORMATS[fmt]
                    good += 1
        # The pool still works, and its worker stayed within its memory limit.
        out = io.BytesIO()
        marked(300, 200).save(out, "JPEG")
        rendered = await pool.transform(out.getvalue(), DEFAULT_PRESETS["avatar"], "png")
        assert decode(rendered.body).size == (200, 200)
        limit, peak = await pool.run(worker_memory)
        assert peak < limit

    asyncio.run(each())
    assert good > 0  # the lying extensions really were rendered
