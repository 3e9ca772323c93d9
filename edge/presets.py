"""Image presets with cdn.bsky.app's names, as one table of data (pure code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Fit = Literal["cover", "inside", "original"]
Format = Literal["jpeg", "webp", "png", "avif"]
FORMATS: tuple[Format, ...] = ("jpeg", "webp", "png", "avif")
CONTENT_TYPES: dict[Format, str] = {
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "png": "image/png",
    "avif": "image/avif",
}


@dataclass(frozen=True)
class Preset:
    """A target box. ``cover`` fills it and crops, ``inside`` fits within it; neither
    ever upscales. ``original`` keeps the source size."""

    name: str
    width: int
    height: int
    fit: Fit
    quality: int = 80
    progressive: bool = False  # JPEG output only


DEFAULT_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("avatar", 1000, 1000, "cover"),
        Preset("avatar_thumbnail", 128, 128, "cover"),
        Preset("banner", 3000, 1000, "cover"),
        Preset("feed_thumbnail", 2000, 2000, "inside"),
        Preset("feed_fullsize", 1000, 1000, "inside"),
        Preset("download", 0, 0, "original", quality=90),
    )
}


def load_presets(extra_json: str | None) -> dict[str, Preset]:
    """The default table extended (or overridden) by a JSON object from settings:
    ``{"name": {"width": 640, "height": 640, "fit": "inside", "quality": 75,
    "progressive": true}}``."""
    presets = dict(DEFAULT_PRESETS)
    for name, spec in json.loads(extra_json or "{}").items():
        if spec.get("fit") not in ("cover", "inside", "original"):
            raise ValueError(f"preset {name}: fit must be cover, inside or original")
        presets[name] = Preset(name, int(spec.get("width", 0)), int(spec.get("height", 0)),
                               spec["fit"], int(spec.get("quality", 80)),
                               bool(spec.get("progressive", False)))
    return presets
