"""core/limits.py: one set of defaults, every limit a setting, decoder processes confined."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, fields

import pytest
from atcdn.core.limits import FetchLimits, ImageLimits, VideoLimits, WorkerLimits
from atcdn.core.settings import EdgeSettings

# Each limit and the EdgeSettings field (ATCDN_EDGE_* variable) it comes from.
SETTING_OF = {
    FetchLimits: {"max_bytes": "max_fetch_bytes", "max_redirects": "max_redirects",
                  "timeout": "fetch_timeout", "connect_timeout": "fetch_connect_timeout",
                  "temp_bytes": "fetch_temp_size", "resolve_timeout": "resolve_timeout"},
    ImageLimits: {"max_source_bytes": "image_max_source_bytes",
                  "max_source_pixels": "image_max_source_pixels",
                  "max_frames": "image_max_frames",
                  "max_animation_pixels": "image_max_animation_pixels"},
    WorkerLimits: {"workers": "transform_workers", "timeout": "transform_timeout",
                   "memory_mb": "transform_memory_mb", "queue_bytes": "transform_queue_size"},
    VideoLimits: {"max_bytes": "video_max_bytes", "max_seconds": "video_max_seconds",
                  "max_pixels": "video_max_pixels", "memory_bytes": "video_memory_bytes",
                  "timeout": "video_timeout", "threads": "video_threads"},
}
NOT_SETTINGS = {(WorkerLimits, "max_tasks"), (VideoLimits, "held_frame_bytes"),
                (FetchLimits, "did_document_bytes")}


@pytest.mark.parametrize("kind", list(SETTING_OF), ids=lambda k: k.__name__)
def test_one_set_of_defaults(kind: type) -> None:
    """The settings' defaults are the limits' defaults: built from default settings, a
    set of limits equals the dataclass's own defaults."""
    assert kind.from_settings(EdgeSettings()) == kind()
    for name, setting in SETTING_OF[kind].items():
        assert EdgeSettings.model_fields[setting].default == getattr(kind(), name)


@pytest.mark.parametrize("kind", list(SETTING_OF), ids=lambda k: k.__name__)
def test_every_limit_is_a_setting(kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    names = {f.name for f in fields(kind)} - {n for k, n in NOT_SETTINGS if k is kind}
    assert names == set(SETTING_OF[kind])
    for offset, (name, setting) in enumerate(SETTING_OF[kind].items(), start=7):
        monkeypatch.setenv(f"ATCDN_EDGE_{setting.upper()}", str(offset))
    limits = kind.from_settings(EdgeSettings())
    for offset, name in enumerate(SETTING_OF[kind], start=7):
        assert getattr(limits, name) == offset, name


def test_video_limits_cross_to_the_child_as_json() -> None:
    """The parent hands the transcoder child its limits as JSON; ``{}`` means defaults."""
    limits = VideoLimits(max_seconds=2.5, max_pixels=1000, threads=1)
    assert VideoLimits(**json.loads(json.dumps(asdict(limits)))) == limits
    assert VideoLimits(**json.loads("{}")) == VideoLimits()


def test_confine_caps_memory_and_core_dumps() -> None:
    """A confined process gets a MemoryError where it would have mapped too much."""
    code = (
        "import resource\n"
        "from atcdn.core.limits import MiB, confine\n"
        "confine(256 * MiB)\n"
        "assert resource.getrlimit(resource.RLIMIT_AS)[0] == 256 * MiB\n"
        "assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)\n"
        "try:\n"
        "    bytearray(512 * MiB)\n"
        "except MemoryError:\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "refused"


def test_decoder_processes_do_not_load_settings() -> None:
    """The image workers and the video child import the limits, not pydantic: they start
    fast (a transcode child starts per video)."""
    code = ("import sys, atcdn.edge.image, atcdn.edge.video; "
            "print(sorted(m for m in ('pydantic', 'pydantic_settings') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
