"""Every bound a stranger's bytes meet, in one place, with the one set of defaults.

A PDS, a DID document or an uploaded blob is hostile until proven otherwise, so each of
them costs at most what these say: bytes fetched and redirects followed (the SSRF guard),
bytes, pixels and frames of an image, bytes, pixels and seconds of a video, time and memory
of the processes that decode them.

The defaults here are the defaults of the ``ATCDN_EDGE_*`` settings (core/settings.py
uses these values for its fields), and ``from_settings`` builds each set from an
``EdgeSettings`` (``FetchLimits.from_origin``: the origin's PDS pulls). Pure dataclasses and no pydantic: the decoder processes (the image
workers, the ``python -m atcdn.edge.video`` child) import this module and start fast.
``confine`` is the one place the decoder processes' address space is capped.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atcdn.core.settings import EdgeSettings, OriginSettings

MiB = 1024 * 1024


@dataclass(frozen=True)
class FetchLimits:
    """One blob fetch from the origin or a PDS, and the SSRF guard's redirects."""

    max_bytes: int = 300 * MiB  # on the wire and decoded (core/bodies.py)
    max_redirects: int = 3
    timeout: float = 30.0  # seconds for the whole fetch
    connect_timeout: float = 3.0
    # Temporary space of all fetches in progress on one node (503 beyond).
    temp_bytes: int = 2 * 1024 * MiB
    # One deadline for a whole DID resolution; a DID document's size, wire and decoded
    # (not a setting).
    resolve_timeout: float = 10.0
    did_document_bytes: int = 64 * 1024

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> FetchLimits:
        return cls(max_bytes=settings.max_fetch_bytes, max_redirects=settings.max_redirects,
                   timeout=settings.fetch_timeout,
                   connect_timeout=settings.fetch_connect_timeout,
                   temp_bytes=settings.fetch_temp_size,
                   resolve_timeout=settings.resolve_timeout)

    @classmethod
    def from_origin(cls, settings: OriginSettings) -> FetchLimits:
        """The origin's pulls from PDSes (its shield): blobs up to its upload limit."""
        return cls(max_bytes=settings.max_blob_bytes, timeout=settings.pull_timeout,
                   temp_bytes=settings.pull_temp_size)


@dataclass(frozen=True)
class ImageLimits:
    """What an image source may cost before it is refused (imgproxy's limits)."""

    max_source_bytes: int = 50 * MiB
    max_source_pixels: int = 50_000_000
    max_frames: int = 300
    # Sum of the pixels of every frame of an animation kept animated; beyond it (or
    # beyond max_frames) an animation is rendered as its first frame.
    max_animation_pixels: int = 100_000_000

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> ImageLimits:
        return cls(max_source_bytes=settings.image_max_source_bytes,
                   max_source_pixels=settings.image_max_source_pixels,
                   max_frames=settings.image_max_frames,
                   max_animation_pixels=settings.image_max_animation_pixels)


@dataclass(frozen=True)
class WorkerLimits:
    """The image worker pool (edge/transform.py): processes, time per task, memory each."""

    workers: int = 2
    timeout: float = 20.0
    memory_mb: int = 1024  # address space of each worker (confine)
    # A worker is replaced after this many tasks, bounding slow leaks/fragmentation.
    max_tasks: int = 500
    # Source bytes of the transforms queued or running, held by one server process
    # (503 Busy beyond; one transform is always admitted).
    queue_bytes: int = 128 * MiB

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> WorkerLimits:
        return cls(workers=settings.transform_workers, timeout=settings.transform_timeout,
                   memory_mb=settings.transform_memory_mb,
                   queue_bytes=settings.transform_queue_size)


@dataclass(frozen=True)
class VideoLimits:
    """What a transcode may cost (edge/video.py checks them, in its child process)."""

    max_bytes: int = 300 * MiB
    max_seconds: float = 600.0
    max_pixels: int = 4096 * 2304
    memory_bytes: int = 3 * 1024 * MiB  # address space of the transcoding child (confine)
    timeout: float = 900.0  # wall time of the child, enforced by its parent
    threads: int = 0  # x264 threads per rendition; 0 = let x264 choose
    # Decoded frames held for the upper renditions while the lowest one makes the first
    # segment (fast start); beyond this they are encoded at once. Not a setting.
    held_frame_bytes: int = 256 * MiB

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> VideoLimits:
        return cls(max_bytes=settings.video_max_bytes, max_seconds=settings.video_max_seconds,
                   max_pixels=settings.video_max_pixels,
                   memory_bytes=settings.video_memory_bytes, timeout=settings.video_timeout,
                   threads=settings.video_threads)


def confine(memory_bytes: int) -> None:
    """Cap this (decoder) process: at most ``memory_bytes`` of address space (RLIMIT_AS,
    so a runaway decode ends in a MemoryError, not the OOM killer; 0 = no cap) and no
    core dumps from a crashing decoder."""
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
