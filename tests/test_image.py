"""The image pipeline on images generated here, directly and through the worker pool."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct
import time
import zlib
from collections.abc import Iterator

import pytest
from atcdn.core.limits import ImageLimits, WorkerLimits
from atcdn.edge.image import MediaError, plan, render, sniff, strip_jpeg
from atcdn.edge.presets import DEFAULT_PRESETS, Preset
from atcdn.edge.transform import Rendered, Transformer
from PIL import Image, ImageChops, ImageCms

from tests.helpers.pictures import (
    BLUE,
    RED,
    assert_no_metadata,
    decode,
    encode,
    marked,
    worker_memory,
)

P = DEFAULT_PRESETS
GREEN, WHITE = (0, 255, 0), (255, 255, 255)
# Orientation n: what a viewer does to the stored pixels to show them upright. To make a
# test file, store the upright picture transformed by the inverse.
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def near(pixel, colour, tolerance: int = 60) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour))


def exif_with_gps(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (43.0, 28.0, 2.81), 3: "E", 4: (11.0, 53.0, 6.46)}
    return exif


# -- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("size, preset, expected", [
    ((4000, 3000), "feed_fullsize", (1000, 750)),
    ((4000, 3000), "feed_thumbnail", (2000, 1500)),
    ((4000, 3000), "avatar", (1000, 1000)),
    ((4000, 3000), "banner", (3000, 1000)),
    ((4000, 3000), "avatar_thumbnail", (128, 128)),
    ((4000, 3000), "download", (4000, 3000)),
    ((500, 300), "feed_fullsize", (500, 300)),    # never upscaled
    ((500, 300), "avatar", (300, 300)),           # cover crops to the aspect, no upscale
    ((500, 300), "banner", (500, 167)),
    ((90, 60), "avatar_thumbnail", (60, 60)),
])
def test_plan_sizes(size, preset, expected):
    assert plan(*size, P[preset]).size == expected


def test_plan_cover_box_is_centred():
    geometry = plan(400, 200, P["avatar_thumbnail"])
    assert geometry.box == (100, 0, 300, 200)


# -- orientation -------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("preset, size", [("download", (300, 200)),
                                          ("feed_fullsize", (300, 200)),
                                          ("avatar_thumbnail", (128, 128))])
def test_exif_orientation_upright(orientation, preset, size):
    upright = marked(1200, 800)
    stored = upright.transpose(STORE[orientation]) if orientation in STORE else upright
    source = encode(stored, quality=90, exif=exif_with_gps(orientation))
    # A 1200x800 upright picture: big enough for shrink-on-load (draft) on thumbnails.
    preset_obj = Preset("t", 300, 300, "inside") if preset == "feed_fullsize" else P[preset]
    if preset == "download":
        preset_obj = P["download"]
    out = decode(render(source, preset_obj, "png"))
    expected = {"download": (1200, 800), "feed_fullsize": size, "avatar_thumbnail": size}[preset]
    assert out.size == expected
    w, h = out.size
    assert near(out.getpixel((3, 3)), RED)
    assert near(out.getpixel((w - 4, 3)), BLUE)
    assert near(out.getpixel((3, h - 4)), BLUE)
    assert_no_metadata(encode(out, "PNG"))


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_orientation_on_webp_and_png_sources(fmt):
    upright = marked(240, 160)
    stored = upright.transpose(STORE[6])
    for container in ("WEBP", "PNG"):
        source = encode(stored, container, exif=exif_with_gps(6))
        out = decode(render(source, P["feed_fullsize"], fmt))
        assert out.size == (240, 160)
        assert near(out.convert("RGB").getpixel((3, 3)), RED)
        assert near(out.convert("RGB").getpixel((236, 3)), BLUE)


# -- metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png", "avif"])
@pytest.mark.parametrize("preset", ["download", "feed_thumbnail", "avatar_thumbnail"])
def test_gps_exif_xmp_comment_stripped(fmt, preset):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:xap="http://ns.adobe.com/xap/1.0/"/>'
    source = encode(marked(320, 240), quality=90, exif=exif_with_gps(1),
                    comment=b"TestCam secret", xmp=xmp)
    assert decode(source).getexif()  # the fixture really carries EXIF
    out = render(source, P[preset], fmt)
    assert sniff(out) == ("jpeg" if fmt == "jpeg" else fmt)
    assert_no_metadata(out)


def test_compliant_jpeg_is_not_reencoded():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(marked(400, 300), quality=95, exif=exif_with_gps(1), icc_profile=icc,
                    comment=b"TestCam") + b"trailing MPF-like data after EOI"
    out = render(source, P["feed_fullsize"], "jpeg")
    assert_no_metadata(out)
    assert out.endswith(b"\xff\xd9")
    assert decode(out).info.get("icc_profile") == icc  # colour kept
    # Same pixels: the entropy-coded data was copied, not re-encoded.
    assert ImageChops.difference(decode(out), decode(source).convert("RGB")).getbbox() is None
    assert len(out) < len(source)


def test_multi_picture_jpeg_is_one_picture():
    """Phones append gain maps / depth maps as MPF images after the primary JPEG."""
    primary, extra = marked(400, 300), Image.new("RGB", (200, 150), GREEN)
    source = encode(primary, "MPO", save_all=True, append_images=[extra],
                    exif=exif_with_gps(1))
    assert Image.open(io.BytesIO(source)).n_frames == 2
    untouched = render(source, P["feed_fullsize"], "jpeg")
    assert_no_metadata(untouched)
    assert getattr(decode(untouched), "n_frames", 1) == 1 and b"MPF" not in untouched
    webp = decode(render(source, P["feed_fullsize"], "webp"))
    assert getattr(webp, "n_frames", 1) == 1 and near(webp.getpixel((3, 3)), RED)


def test_jpeg_needing_rotation_is_reencoded_upright():
    source = encode(marked(300, 200).transpose(STORE[6]), exif=exif_with_gps(6))
    out = decode(render(source, P["feed_fullsize"], "jpeg"))
    assert out.size == (300, 200) and near(out.getpixel((3, 3)), RED)


def test_strip_jpeg_keeps_only_image_segments():
    source = encode(marked(64, 64), exif=exif_with_gps(1), comment=b"TestCam")
    stripped = strip_jpeg(source)
    assert b"TestCam" not in stripped and b"Exif" not in stripped
    assert decode(stripped).size == (64, 64)
    with pytest.raises(ValueError):
        strip_jpeg(source[: len(source) // 2])


# -- colour and pixel layouts -------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb():
    source = encode(Image.new("CMYK", (200, 100), (0, 255, 255, 0)))  # red in CMYK
    out = decode(render(source, P["feed_fullsize"], "jpeg"))
    assert out.mode == "RGB" and near(out.getpixel((100, 50)), RED, 40)


def test_srgb_icc_png_kept_colours():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(Image.new("RGB", (50, 50), (10, 200, 30)), "PNG", icc_profile=icc)
    out = decode(render(source, P["feed_fullsize"], "png"))
    assert near(out.getpixel((25, 25)), (10, 200, 30), 3)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_16bit_greyscale_is_scaled_not_clipped(fmt):
    image = Image.new("I", (64, 64), 32768).convert("I;16")
    out = decode(render(encode(image, "PNG"), P["feed_fullsize"], fmt)).convert("L")
    assert 110 <= out.getpixel((32, 32)) <= 145


def test_16bit_rgb_png():
    image = Image.new("RGB", (40, 40), RED)
    # Pillow writes RGB as 8-bit; build a 16-bit RGB PNG by hand with raw rows.
    raw = b"".join(b"\x00" + struct.pack(">HHH", 65535, 0, 0) * 40 for _ in range(40))
    png = _png(40, 40, bit_depth=16, colour_type=2, data=zlib.compress(raw))
    out = decode(render(png, P["avatar"], "jpeg"))
    assert out.size == (40, 40) and near(out.getpixel((20, 20)), image.getpixel((0, 0)), 10)


@pytest.mark.parametrize("mode", ["L", "LA", "1", "P"])
def test_greyscale_and_palette_inputs(mode):
    image = Image.new("RGB", (80, 60), (200, 200, 200)).convert(mode)
    for fmt in ("jpeg", "png", "webp"):
        out = decode(render(encode(image, "PNG"), P["feed_fullsize"], fmt))
        assert out.size == (80, 60)


def test_palette_transparency_kept_in_png_and_flattened_in_jpeg():
    image = Image.new("P", (60, 60), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (30, 0, 60, 60))
    source = encode(image, "PNG", transparency=1)  # right half transparent
    png = decode(render(source, P["feed_fullsize"], "png"))
    assert png.mode == "RGBA" and png.getpixel((45, 30))[3] == 0
    assert png.getpixel((10, 30)) == (255, 0, 0, 255)
    webp = decode(render(source, P["feed_fullsize"], "webp"))
    assert webp.mode == "RGBA" and webp.getpixel((45, 30))[3] == 0
    jpeg = decode(render(source, P["feed_fullsize"], "jpeg"))
    assert jpeg.mode == "RGB" and near(jpeg.getpixel((45, 30)), WHITE, 10)
    assert near(jpeg.getpixel((10, 30)), RED, 40)


def test_rgba_alpha_survives_resize_and_opaque_alpha_is_dropped():
    image = Image.new("RGBA", (400, 400), (0, 255, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 200, 400))
    out = decode(render(encode(image, "PNG"), P["avatar_thumbnail"], "webp"))
    assert out.mode == "RGBA" and out.getpixel((10, 64))[3] == 0
    assert out.getpixel((118, 64))[3] == 255
    opaque = decode(render(encode(Image.new("RGBA", (40, 40), RED), "PNG"), P["avatar"], "png"))
    assert opaque.mode == "RGB"


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png", "avif"])
def test_output_formats(fmt):
    out = render(encode(marked(300, 200)), P["avatar_thumbnail"], fmt)
    image = decode(out)
    assert image.format == {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "avif": "AVIF"}[fmt]
    assert image.size == (128, 128)


def test_progressive_jpeg_preset():
    from atcdn.edge.presets import load_presets

    preset = load_presets('{"p": {"width": 100, "height": 100, "fit": "inside", '
                          '"quality": 70, "progressive": true}}')["p"]
    out = decode(render(encode(marked(400, 300)), preset, "jpeg"))
    assert out.size == (100, 75) and out.info.get("progressive")
    plain = decode(render(encode(marked(400, 300)), P["feed_fullsize"], "jpeg"))
    assert not plain.info.get("progressive")


@pytest.mark.parametrize("container", ["WEBP", "AVIF", "GIF", "PNG"])
def test_other_source_containers(container):
    image = marked(600, 400)
    if container == "GIF":
        image = image.convert("P")
    out = decode(render(encode(image, container), P["avatar_thumbnail"], "jpeg"))
    assert out.size == (128, 128) and near(out.getpixel((3, 3)), RED, 70)


def test_heic_source():
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("libheif has no HEVC encoder to make a fixture")
    out = io.BytesIO()
    marked(600, 400).save(out, format="HEIF")
    image = decode(render(out.getvalue(), P["feed_fullsize"], "jpeg"))
    assert image.size == (600, 400) and near(image.getpixel((3, 3)), RED)


# -- no upscaling, cover crops ------------------------------------------------------------


@pytest.mark.parametrize("preset, expected", [
    ("avatar", (60, 60)), ("banner", (90, 30)), ("feed_thumbnail", (90, 60)),
    ("feed_fullsize", (90, 60)), ("avatar_thumbnail", (60, 60)), ("download", (90, 60)),
])
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_small_source_is_never_upscaled(preset, expected, fmt):
    source = encode(marked(90, 60), "PNG")
    assert decode(render(source, P[preset], fmt)).size == expected


def test_cover_crops_the_centre():
    image = Image.new("RGB", (800, 400), GREEN)
    image.paste(RED, (200, 0, 400, 400))
    image.paste(BLUE, (400, 0, 600, 400))
    out = decode(render(encode(image, "PNG"), P["avatar_thumbnail"], "png"))
    assert out.size == (128, 128)
    assert near(out.getpixel((5, 64)), RED, 5) and near(out.getpixel((122, 64)), BLUE, 5)


# -- animation ---------------------------------------------------------------------------


def animation(container: str, frames: int = 3) -> bytes:
    colours = [RED, GREEN, BLUE, WHITE]
    images = [Image.new("RGB", (300, 200), colours[i % 4]) for i in range(frames)]
    if container == "GIF":
        images = [im.convert("P") for im in images]
    return encode(images[0], container, save_all=True, append_images=images[1:],
                  duration=100, loop=0)


@pytest.mark.parametrize("container", ["GIF", "WEBP", "PNG"])
def test_animation_stays_animated_as_webp(container):
    out = decode(render(animation(container), P["avatar_thumbnail"], "webp"))
    assert out.format == "WEBP" and out.n_frames == 3 and out.size == (128, 128)
    seen = []
    for index in range(3):
        out.seek(index)
        seen.append(out.convert("RGB").getpixel((64, 64)))
    assert near(seen[0], RED) and near(seen[1], GREEN) and near(seen[2], BLUE)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_animation_first_frame_for_still_formats(fmt):
    out = decode(render(animation("GIF"), P["feed_fullsize"], fmt))
    assert getattr(out, "n_frames", 1) == 1 and near(out.convert("RGB").getpixel((5, 5)), RED)


def test_animation_over_limits_becomes_still():
    limits = ImageLimits(max_frames=2)
    out = decode(render(animation("GIF"), P["feed_fullsize"], "webp", limits))
    assert getattr(out, "n_frames", 1) == 1
    limits = ImageLimits(max_animation_pixels=300 * 200 * 2)
    out = decode(render(animation("WEBP"), P["feed_fullsize"], "webp", limits))
    assert getattr(out, "n_frames", 1) == 1


# -- refusals ----------------------------------------------------------------------------


def _png(width: int, height: int, bit_depth: int = 8, colour_type: int = 0,
         data: bytes | None = None) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = data if data is not None else zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("source, status, error", [
    (b"", 415, "UnsupportedMediaType"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', 415,
     "UnsupportedMediaType"),
    (encode(Image.new("RGB", (8, 8)), "BMP"), 415, "UnsupportedMediaType"),
    (encode(Image.new("RGB", (8, 8)), "TIFF"), 415, "UnsupportedMediaType"),
    (encode(Image.new("RGB", (8, 8)), "PPM"), 415, "UnsupportedMediaType"),
    (b"\xff\xd8\xff\xe0 this is not a jpeg", 422, "UndecodableMedia"),
    (encode(marked(300, 200))[:700], 422, "UndecodableMedia"),           # truncated JPEG
    (encode(marked(300, 200), "PNG")[:300], 422, "UndecodableMedia"),    # truncated PNG
    (_png(30000, 30000), 422, "TooManyPixels"),                          # bomb header
    (b"GIF89a" + b"\x00" * 20, 422, "UndecodableMedia"),
])
def test_refusals(source, status, error):
    for preset in ("avatar_thumbnail", "download"):
        with pytest.raises(MediaError) as caught:
            render(source, P[preset], "jpeg")
        assert (caught.value.status, caught.value.error) == (status, error)


def test_limits_bytes_and_pixels():
    source = encode(marked(100, 100))
    with pytest.raises(MediaError) as caught:
        render(source, P["avatar"], "jpeg", ImageLimits(max_source_bytes=len(source) - 1))
    assert caught.value.status == 413
    with pytest.raises(MediaError) as caught:
        render(source, P["avatar"], "jpeg", ImageLimits(max_source_pixels=9999))
    assert (caught.value.status, caught.value.error) == (422, "TooManyPixels")


def test_bomb_error_cites_the_configured_limit():
    """A 280 MP header trips Pillow's own guard first; the answer names our limit."""
    for limit in (50_000_000, 20_000_000):
        with pytest.raises(MediaError) as caught:
            render(_png(20000, 14000), P["avatar"], "jpeg", ImageLimits(max_source_pixels=limit))
        assert (caught.value.status, caught.value.error) == (422, "TooManyPixels")
        assert str(limit) in caught.value.message, caught.value.message
        assert "178956970" not in caught.value.message  # Pillow's default bomb limit


def test_webp_size_limit_is_a_clear_422():
    source = encode(Image.new("L", (16400, 8)), "PNG")
    with pytest.raises(MediaError) as caught:
        render(source, P["download"], "webp")
    assert (caught.value.status, caught.value.error) == (422, "UnrenderableSize")
    assert decode(render(source, P["download"], "png")).size == (16400, 8)


def test_media_error_pickles():
    import pickle

    error = pickle.loads(pickle.dumps(MediaError(422, "UndecodableMedia", "bad")))
    assert (error.status, error.error, error.message) == (422, "UndecodableMedia", "bad")


# -- through the worker pool --------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[Transformer]:
    transformer = Transformer(ImageLimits(), WorkerLimits(workers=1, timeout=5, memory_mb=768))
    yield transformer
    transformer.close()


def run(coroutine):
    return asyncio.run(coroutine)


def crash() -> None:
    """A decoder segfaulting, played by the worker itself."""
    os.kill(os.getpid(), signal.SIGSEGV)


def spin() -> None:
    time.sleep(60)


def hog() -> int:
    return len(bytearray(2 * 1024**3))


def test_pool_renders(pool):
    rendered = run(pool.transform(encode(marked(600, 400)), P["avatar_thumbnail"], "webp"))
    assert isinstance(rendered, Rendered) and rendered.content_type == "image/webp"
    assert decode(rendered.body).size == (128, 128)


def test_pool_refusal_is_a_media_error(pool):
    with pytest.raises(MediaError) as caught:
        run(pool.transform(b"<svg/>", P["avatar"], "jpeg"))
    assert caught.value.status == 415


@pytest.mark.parametrize("task, status", [(crash, 503), (spin, 503), (hog, 422)])
def test_pool_survives_crash_timeout_and_memory_blowup(pool, task, status):
    pool_timeout = Transformer.run  # the same path transform() takes
    started = time.monotonic()
    with pytest.raises(MediaError) as caught:
        run(pool_timeout(pool, task))
    assert caught.value.status == status
    assert time.monotonic() - started < 30
    test_pool_renders(pool)  # the next call works


def test_pool_memory_is_capped(pool):
    limit, peak = run(pool.run(worker_memory))
    assert limit == 768 * 1024 * 1024 and peak < limit


def test_default_transformer_works():
    transformer = Transformer()
    try:
        assert decode(run(transformer.transform(encode(marked(64, 64)), P["avatar"],
                                                "png")).body).size == (64, 64)
    finally:
        transformer.close()


def test_settings_feed_the_pool(monkeypatch):
    from atcdn.core.settings import EdgeSettings

    monkeypatch.setenv("ATCDN_EDGE_IMAGE_MAX_SOURCE_PIXELS", "1234")
    monkeypatch.setenv("ATCDN_EDGE_TRANSFORM_WORKERS", "1")
    settings = EdgeSettings()
    transformer = Transformer.from_settings(settings)
    try:
        assert transformer.limits.max_source_pixels == 1234
        assert transformer.pool_limits.workers == 1
        with pytest.raises(MediaError) as caught:
            run(transformer.transform(encode(marked(64, 64)), P["avatar"], "png"))
        assert caught.value.error == "TooManyPixels"
    finally:
        transformer.close()
