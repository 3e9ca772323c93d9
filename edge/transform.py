"""The transform interface the edge server calls.

STUB: a provisional in-process implementation so the server can be built against the
interface; the real pipeline (edge/image.py) and worker pool replace its body.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from edge.presets import CONTENT_TYPES, Format, Preset


class MediaError(Exception):
    """A transform refused or failed; ``status`` is the honest HTTP code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str


async def transform(source: bytes, preset: Preset, fmt: Format) -> Rendered:
    """Render ``source`` (verified blob bytes) for ``preset`` in ``fmt``.

    Raises MediaError: 415 unsupported type, 422 undecodable / too many pixels,
    413 too large, 503 worker crashed or timed out.
    """
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(source)))
    except Exception as exc:
        raise MediaError(422, "UndecodableMedia", str(exc)) from None
    if preset.fit != "original":
        image.thumbnail((preset.width, preset.height))
    if fmt == "jpeg":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format=fmt.upper(), quality=preset.quality)
    return Rendered(out.getvalue(), CONTENT_TYPES[fmt])
