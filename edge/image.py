"""The image pipeline: verified source bytes in, one rendition out (pure code, no I/O).

imgproxy-style, a request is a ``Job`` passed through ``PIPELINE``, a list of named steps.
Each step is a small function that reads and updates the job; a step that can answer early
(the no-re-encode JPEG path) sets ``job.output`` and the rest is skipped. Every failure is
a ``MediaError`` with an honest status: 413 too many bytes, 415 not an image type we
render, 422 undecodable or too many pixels.

Guarantees: output is upright (EXIF orientation applied), never upscaled, in sRGB (ICC
profiles converted, or kept on the untouched JPEG path), and carries no metadata (no EXIF,
GPS, XMP, comments); only the ICC profile of an untouched JPEG survives.

This module runs inside the worker processes of edge/transform.py, never in the server.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from atcdn.core.errors import AtcdnError
from atcdn.core.limits import ImageLimits
from atcdn.edge.presets import Format, Preset
from PIL import Image, ImageCms

try:  # HEIC/HEIF decoding; AVIF is Pillow's own (Pillow >= 11.3).
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency
    pillow_heif = None


class MediaError(AtcdnError):
    """A transform refused or failed; ``status`` is the honest HTTP code (it pickles
    across the process boundary from the workers)."""


# Speed/quality of the resize (see bench/images.py). Like libvips (sharp): JPEG
# shrink-on-load to the smallest DCT scale still >= the output (DRAFT_GAP 1), then an
# integer box reduce() to within REDUCING_GAP x of the output, then one convolution.
# Hamming (1 lobe, area-aware) costs half of Lanczos-3 on the large mild downscales that
# dominate (4 MP -> 2000 px) for a slightly softer result; LANCZOS here is sharper.
RESAMPLE = Image.Resampling.HAMMING
DRAFT_GAP = 1.0
REDUCING_GAP = 2.0
WHITE = (255, 255, 255)
AVIF_SPEED = 8
WEBP_MAX_SIDE = 16383

# Container signatures -> the Pillow plugin allowed to parse them. Nothing else is opened.
PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP",
                  "avif": "AVIF", "heif": "HEIF"}
ANIMATED_KINDS = {"gif", "png", "webp", "avif"}
AVIF_BRANDS = {b"avif", b"avis"}
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


@dataclass(frozen=True)
class Geometry:
    """Crop box in upright source coordinates, the output size, the upright source size."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    source: tuple[int, int]

    @property
    def is_identity(self) -> bool:
        return self.size == self.source and self.box == (0, 0, *self.source)


@dataclass
class Job:
    source: bytes
    preset: Preset
    fmt: Format
    limits: ImageLimits
    kind: str = ""
    image: Image.Image | None = None
    orientation: int = 1
    geometry: Geometry | None = None
    animated: bool = False
    frames: list[Image.Image] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    icc: bytes | None = None
    output: bytes | None = None


Step = Callable[[Job], None]


# -- steps ---------------------------------------------------------------------------


def check_source_size(job: Job) -> None:
    """Refuse oversized sources before looking at them."""
    if len(job.source) > job.limits.max_source_bytes:
        raise MediaError(413, "SourceTooLarge",
                         f"source is {len(job.source)} bytes, limit {job.limits.max_source_bytes}")


def sniff_type(job: Job) -> None:
    """Name the container from its first bytes; never trust an extension or a header."""
    job.kind = sniff(job.source)
    if not job.kind:
        raise MediaError(415, "UnsupportedMediaType",
                         "not a JPEG, PNG, GIF, WebP, AVIF or HEIF image")


def read_header(job: Job) -> None:
    """Parse the header only, with the one plugin the signature named."""
    try:
        job.image = Image.open(io.BytesIO(job.source), formats=[PILLOW_FORMATS[job.kind]])
    except Image.DecompressionBombError:  # Pillow's own limit, twice its default: cite ours
        raise _too_many_pixels("the image", job.limits) from None
    width, height = job.image.size
    if width < 1 or height < 1:
        raise MediaError(422, "UndecodableMedia", f"image declares {width}x{height}")


def check_pixels(job: Job) -> None:
    """Refuse decompression bombs from the declared size, before any pixel is decoded."""
    width, height = job.image.size
    if width * height > job.limits.max_source_pixels:
        raise _too_many_pixels(f"{width}x{height}", job.limits)


def _too_many_pixels(what: str, limits: ImageLimits) -> MediaError:
    return MediaError(422, "TooManyPixels",
                      f"{what} exceeds this edge's limit of {limits.max_source_pixels} pixels"
                      " (ATCDN_EDGE_IMAGE_MAX_SOURCE_PIXELS)")


def read_orientation(job: Job) -> None:
    """EXIF orientation (1-8) and the crop/size plan in upright coordinates."""
    try:
        value = job.image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make a good image fail
        value = 1
    job.orientation = value if value in range(1, 9) else 1
    width, height = job.image.size
    if job.orientation >= 5:
        width, height = height, width
    job.geometry = plan(width, height, job.preset)


def check_animation(job: Job) -> None:
    """An animation stays animated only as WebP and within the frame/pixel limits. (A
    JPEG's extra MPF images are gain maps, depth maps or stereo views, and a HEIF's extra
    top-level images a collection: never frames.)"""
    if (job.fmt != "webp" or job.kind not in ANIMATED_KINDS
            or not getattr(job.image, "is_animated", False)):
        return
    frames = job.image.n_frames
    width, height = job.image.size
    job.animated = (frames <= job.limits.max_frames
                    and frames * width * height <= job.limits.max_animation_pixels)


def copy_compliant_jpeg(job: Job) -> None:
    """A JPEG that already fits, asked for as JPEG, upright: strip its metadata at the
    byte level and send it without re-encoding (no generation loss)."""
    image = job.image
    if not (job.kind == "jpeg" and job.fmt == "jpeg" and job.orientation == 1
            and image.mode in ("RGB", "L")
            and job.geometry.is_identity):
        return
    stripped = strip_jpeg(job.source)
    verify_jpeg(stripped)
    job.output = stripped


def scale_on_load(job: Job) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is that much smaller."""
    if job.kind != "jpeg" or job.animated:
        return
    box, size = job.geometry.box, job.geometry.size
    scale = min(1.0, DRAFT_GAP * size[0] / (box[2] - box[0]))
    if scale >= 0.5:
        return
    width, height = job.image.size
    job.image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def load_frames(job: Job) -> None:
    """Decode: the first frame, or every frame of an animation kept animated."""
    image = job.image
    if not job.animated:
        image.load()
        job.frames = [image]
        return
    for index in range(image.n_frames):
        image.seek(index)
        image.load()
        job.frames.append(image.convert("RGBA"))
        job.durations.append(int(image.info.get("duration") or 0))


def keep_icc(job: Job) -> None:
    """Remember the colour profile; every other piece of metadata is dropped later."""
    icc = job.image.info.get("icc_profile")
    job.icc = icc if icc and not is_srgb(icc) else None


def orient(job: Job) -> None:
    """Make pixels upright; the EXIF tag saying otherwise is gone with the metadata."""
    if job.orientation != 1:
        job.frames = [frame.transpose(TRANSPOSE[job.orientation]) for frame in job.frames]


def normalize_mode(job: Job) -> None:
    """Bring every pixel layout to L, RGB, RGBA (or CMYK, converted after resize)."""
    job.frames = [working_mode(frame) for frame in job.frames]


def resize(job: Job) -> None:
    """Crop and scale to the plan; downscaling only (the plan never asks for more)."""
    job.frames = [scale(frame, job.geometry) for frame in job.frames]


def to_srgb(job: Job) -> None:
    """Convert ICC-tagged (and CMYK) pixels to sRGB on the small, resized image."""
    job.frames = [srgb(frame, job.icc) for frame in job.frames]


def fit_alpha(job: Job) -> None:
    """JPEG has no alpha: flatten onto white. Elsewhere drop an alpha that is all opaque."""
    job.frames = [alpha_for(frame, job.fmt, keep_rgba=job.animated) for frame in job.frames]


def encode(job: Job) -> None:
    """Save in the requested format with no metadata at all."""
    out = io.BytesIO()
    first = job.frames[0]
    if job.fmt == "webp" and max(first.size) > WEBP_MAX_SIDE:
        raise MediaError(422, "UnrenderableSize",
                         f"WebP cannot hold {first.width}x{first.height}; ask for jpeg or png")
    for frame in job.frames:
        frame.info = {}
    options = ENCODERS[job.fmt](job)
    if job.animated and len(job.frames) > 1:
        options.update(save_all=True, append_images=job.frames[1:], duration=job.durations,
                       # No loop count in the source means "play once".
                       loop=int(job.image.info.get("loop", 1)))
    first.save(out, format=job.fmt.upper(), **options)
    job.output = out.getvalue()


PIPELINE: tuple[Step, ...] = (
    check_source_size,
    sniff_type,
    read_header,
    check_pixels,
    read_orientation,
    check_animation,
    copy_compliant_jpeg,
    scale_on_load,
    load_frames,
    keep_icc,
    orient,
    normalize_mode,
    resize,
    to_srgb,
    fit_alpha,
    encode,
)


def render(source: bytes, preset: Preset, fmt: Format,
           limits: ImageLimits = ImageLimits(), steps: tuple[Step, ...] = PIPELINE) -> bytes:
    """Run ``source`` through the pipeline; the bytes of the rendition in ``fmt``."""
    job = Job(source, preset, fmt, limits)
    try:
        for step in steps:
            step(job)
            if job.output is not None:
                return job.output
    except MediaError:
        raise
    except Exception as exc:  # a decoder deep in a step (MemoryError included): the
        raise undecodable(exc) from None  # source is what is wrong
    raise AssertionError("the pipeline ended without output")


# -- the pieces the steps use --------------------------------------------------------


def sniff(data: bytes) -> str:
    """The image kind from magic bytes, or "" for anything we do not render."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(size, 64), 4)}
        if data[8:12] in AVIF_BRANDS or (brands & AVIF_BRANDS and data[8:12] not in HEIF_BRANDS):
            return "avif"
        if brands & HEIF_BRANDS and pillow_heif is not None:
            return "heif"
    return ""


def plan(width: int, height: int, preset: Preset) -> Geometry:
    """Where to crop and what size to produce, never larger than the source.

    ``inside`` fits the box; ``cover`` takes the largest centred region of the box's
    aspect ratio and scales it to the box, or keeps it at source scale when smaller.
    """
    full, source = (0, 0, width, height), (width, height)
    if preset.fit == "original" or preset.width <= 0 or preset.height <= 0:
        return Geometry(full, source, source)
    if preset.fit == "inside":
        ratio = min(preset.width / width, preset.height / height, 1.0)
        size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        return Geometry(full, size, source)
    aspect = preset.width / preset.height
    if width / height > aspect:
        crop_w, crop_h = height * aspect, float(height)
    else:
        crop_w, crop_h = float(width), width / aspect
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    if crop_w >= preset.width:
        return Geometry(box, (preset.width, preset.height), source)
    size = (max(1, round(crop_w)), max(1, round(crop_h)))
    # Not scaled: an integral crop keeps pixels exact.
    left, top = (width - size[0]) // 2, (height - size[1]) // 2
    return Geometry((left, top, left + size[0], top + size[1]), size, source)


TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def working_mode(image: Image.Image) -> Image.Image:
    if image.mode in ("RGB", "RGBA", "L", "CMYK"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit (and float) greyscale: scale to 8 bits rather than clip.
        scale = 1 / 256 if image.mode.startswith("I;16") or image.getextrema()[1] > 255 else 1
        return image.convert("I").point(lambda v: v * scale).convert("L")
    has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
    if image.mode == "1" and not has_alpha:
        return image.convert("L")
    return image.convert("RGBA" if has_alpha else "RGB")


def scale(image: Image.Image, geometry: Geometry) -> Image.Image:
    if geometry.is_identity:
        return image
    # The image may have been decoded at a reduced scale (draft): map the plan onto it.
    fx, fy = image.width / geometry.source[0], image.height / geometry.source[1]
    left, top, right, bottom = geometry.box
    box = (left * fx, top * fy, right * fx, bottom * fy)
    if (fx, fy) == (1, 1) and (right - left, bottom - top) == geometry.size \
            and all(v == int(v) for v in box):
        return image.crop(tuple(int(v) for v in box))
    return image.resize(geometry.size, RESAMPLE, box=box, reducing_gap=REDUCING_GAP)


def srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    if image.mode == "CMYK":
        if icc:
            try:
                return ImageCms.applyTransform(image, _transform(icc, "CMYK", "RGB"))
            except Exception:
                pass  # a broken profile: fall back to the plain conversion
        return image.convert("RGB")
    if not icc or image.mode not in ("RGB", "RGBA"):
        return image  # greyscale profiles are close enough to sRGB's curve
    try:
        transform = _transform(icc, "RGB", "RGB")
    except Exception:
        return image
    if image.mode == "RGB":
        return ImageCms.applyTransform(image, transform)
    rgb = ImageCms.applyTransform(image.convert("RGB"), transform)
    rgb.putalpha(image.getchannel("A"))
    return rgb


@lru_cache(maxsize=32)
def _transform(icc: bytes, mode_in: str, mode_out: str) -> ImageCms.ImageCmsTransform:
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(source, _SRGB, mode_in, mode_out,
                                   renderingIntent=ImageCms.Intent.PERCEPTUAL)


_SRGB = ImageCms.createProfile("sRGB")


@lru_cache(maxsize=32)
def is_srgb(icc: bytes) -> bool:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return "srgb" in ImageCms.getProfileDescription(profile).lower()
    except Exception:
        return True  # an unreadable profile is ignored, as browsers do


def alpha_for(image: Image.Image, fmt: Format, keep_rgba: bool) -> Image.Image:
    if image.mode != "RGBA":
        return image if fmt in ("jpeg", "png") or image.mode == "RGB" else image.convert("RGB")
    if fmt == "jpeg":
        flat = Image.new("RGB", image.size, WHITE)
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    if not keep_rgba and image.getchannel("A").getextrema()[0] == 255:
        return image.convert("RGB")
    return image


ENCODERS: dict[str, Callable[[Job], dict]] = {
    "jpeg": lambda job: {"quality": job.preset.quality, "progressive": job.preset.progressive,
                         "optimize": False},
    "png": lambda job: {"optimize": False},
    "webp": lambda job: {"quality": job.preset.quality, "method": 4},
    "avif": lambda job: {"quality": job.preset.quality, "speed": AVIF_SPEED},
}


# -- JPEG at the byte level ----------------------------------------------------------

# APPn segments we keep: JFIF (APP0), the ICC profile (APP2), Adobe's colour transform
# flag (APP14). EXIF/XMP (APP1), MPF (APP2), IPTC (APP13), comments (COM) are dropped.
KEEP_APP = {0xE0: b"JFIF\x00", 0xE2: b"ICC_PROFILE\x00", 0xEE: b"Adobe"}


def strip_jpeg(data: bytes) -> bytes:
    """The JPEG without metadata segments and without anything after its EOI (where
    phones append preview, depth and gain-map images); image data copied verbatim."""
    out = [b"\xff\xd8"]
    pos, end = 2, len(data)
    while True:
        if pos >= end or data[pos] != 0xFF:
            raise ValueError("JPEG: marker expected")
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            raise ValueError("JPEG: truncated")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out.append(bytes((0xFF, marker)))
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > end:
            raise ValueError("JPEG: truncated segment")
        segment = data[pos:pos + length]
        pos += length
        if _keep_segment(marker, segment[2:]):
            out.append(bytes((0xFF, marker)) + segment)
        if marker == 0xDA:
            scan_end = _entropy_end(data, pos)
            out.append(data[pos:scan_end])
            pos = scan_end


def _keep_segment(marker: int, payload: bytes) -> bool:
    if 0xE0 <= marker <= 0xEF:
        prefix = KEEP_APP.get(marker)
        return prefix is not None and payload.startswith(prefix)
    return marker != 0xFE


def _entropy_end(data: bytes, pos: int) -> int:
    """Offset of the marker that ends entropy-coded data (stuffing and RSTn are data)."""
    while True:
        i = data.find(b"\xff", pos)
        if i < 0 or i + 1 >= len(data):
            raise ValueError("JPEG: truncated scan")
        following = data[i + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos = i + 1 if following == 0xFF else i + 2
            continue
        return i


def verify_jpeg(data: bytes) -> None:
    """Decode (at 1/8 scale: every coefficient is still read) so a truncated or corrupt
    JPEG is never sent on untouched."""
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


def undecodable(exc: BaseException) -> MediaError:
    if isinstance(exc, MediaError):
        return exc
    if isinstance(exc, MemoryError):
        return MediaError(422, "UndecodableMedia", "image needs more memory than allowed")
    if isinstance(exc, Image.DecompressionBombError):  # a later frame: not Pillow's number
        return MediaError(422, "TooManyPixels", "a frame has more pixels than allowed")
    return MediaError(422, "UndecodableMedia", f"cannot decode image: {exc}".strip())
