"""Byte sizes with suffixes (core/sizes.py), and every byte-size setting accepting them."""

from __future__ import annotations

import pytest
from atcdn.core.settings import EdgeSettings, OriginSettings
from atcdn.core.sizes import format_size, parse_size
from pydantic import ValidationError

GiB, MiB, KiB = 1024**3, 1024**2, 1024


@pytest.mark.parametrize("text, size", [
    ("4096", 4096),
    (4096, 4096),
    ("0", 0),
    ("10G", 10 * GiB),
    ("10g", 10 * GiB),
    ("512M", 512 * MiB),
    ("64k", 64 * KiB),
    ("2T", 2 * 1024**4),
    ("1.5GiB", int(1.5 * GiB)),
    ("1.5 GiB", int(1.5 * GiB)),
    ("256MiB", 256 * MiB),
    ("300MB", 300 * 1000**2),
    ("10GB", 10 * 1000**3),
    ("1kb", 1000),
    ("100B", 100),
    (" 7 m ", 7 * MiB),
    (".5K", 512),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "ten", "10X", "10 GiBs", "-1", "1.2.3G", "10 G B",
                                  True, -5])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(10 * GiB) == "10.0 GiB"
    assert format_size(256 * MiB) == "256.0 MiB"
    assert format_size(900) == "900 B"


BYTE_SETTINGS = {
    EdgeSettings: ["cache_size", "memory_cache_size", "memory_max_item", "memory_file_max",
                   "max_fetch_bytes", "image_max_source_bytes", "video_max_bytes",
                   "video_memory_bytes"],
    OriginSettings: ["max_blob_bytes"],
}


@pytest.mark.parametrize("model, name", [(m, n) for m, names in BYTE_SETTINGS.items()
                                         for n in names])
def test_every_byte_setting_takes_suffixes(monkeypatch, model, name):
    prefix = model.model_config["env_prefix"]
    monkeypatch.setenv(f"{prefix}{name.upper()}", "1.5GiB")
    assert getattr(model(), name) == int(1.5 * GiB)
    monkeypatch.setenv(f"{prefix}{name.upper()}", "lots")
    with pytest.raises(ValidationError):
        model()


def test_cache_size_flag_style(monkeypatch):
    monkeypatch.setenv("ATCDN_EDGE_CACHE_SIZE", "10G")
    assert EdgeSettings().cache_size == 10 * GiB
