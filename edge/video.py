"""Video to HLS with PyAV: decode the source once, encode every rendition from those frames.

This module runs in its own process (``python -m atcdn.edge.video SOURCE OUTDIR LIMITS_JSON``),
started by edge/transcodes.py, so a decoder crash or a memory blow-up on hostile media
cannot take the edge down. The child holds the per-CID file lock for its whole life, which
is what makes a transcode single-flight across every worker process of a node.

A transcode is a ``Transcode`` passed through ``PIPELINE``, a tuple of named steps, as an
image is in edge/image.py: probe the source against the limits, decode up to the first
video frame, choose the ladder from its upright size (edge/hls.py), then every decoded
frame: video frames through ``FRAME_STEPS`` (timestamp, upright, length, rate cap,
keyframe cuts, encode, thumbnail, progress), audio resampled once and encoded as AAC for
every rendition; at the end flush the audio, give the last frame its duration, and close
the renditions. Every rendition (libx264 + AAC-LC stereo) goes into a fragmented MP4 cut
into init.mp4 + segNNNNN.m4s files as they appear (``SegmentSink``), its media playlist
rewritten after every segment; the master playlist appears with the first segment. The
folder's files are listed in edge/transcode_files.py; ``done`` is written last.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from functools import partial
from itertools import chain
from pathlib import Path

import av
from atcdn.core.files import write_atomic, write_json
from atcdn.core.limits import VideoLimits, confine
from atcdn.core.mime import SNIFF_BYTES, sniff
from atcdn.core.sandbox import isolate, user_ids
from atcdn.edge import hls
from atcdn.edge.transcode_files import (
    DONE_NAME,
    ERROR_NAME,
    EXIT_BUSY,
    EXIT_DONE,
    EXIT_REFUSED,
    LOCK_NAME,
    META_NAME,
    STATE_NAME,
    THUMBNAIL_NAME,
    VideoError,
    clear,
)
from av.audio.frame import AudioFrame
from av.video.frame import PictureType, VideoFrame
from filelock import FileLock, Timeout

VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_RATE = 48_000
X264_PRESET = "veryfast"
X264_CRF = 23
# Frames closer than this to the previous one are dropped: at most 60 fps (with slack
# for jittery timestamps).
MIN_FRAME_INTERVAL = 1 / hls.MAX_FPS * 0.9


@dataclass
class Probe:
    """What the transcode needs to know about the source before decoding it."""

    width: int  # displayed, rotation applied (once the first frame is decoded)
    height: int
    fps: float
    duration: float | None
    has_audio: bool
    loop: bool  # animated GIFs: players should loop them


@dataclass
class Transcode:
    """One transcode as it goes through the steps: the source, what is known of it, the
    encoders, and the frame in hand (``frame`` is None once a step dropped it)."""

    container: av.container.InputContainer
    source: Path
    out: Path
    limits: VideoLimits
    frames: Iterator[VideoFrame | AudioFrame] | None = None  # decoded, in demux order
    info: Probe | None = None
    progress: Progress | None = None
    # The first video frame: its timestamp is time 0, its upright size chooses the ladder.
    first_time: float = 0.0
    upright: Upright | None = None
    renditions: list[hls.Rendition] = field(default_factory=list)
    writers: list[RenditionWriter] = field(default_factory=list)
    encoders: Encoders | None = None
    # The video frame in hand, its time (seconds since the first frame), and whether a
    # segment starts with it (a keyframe in every rendition).
    frame: VideoFrame | None = None
    time: float = 0.0
    key: bool = False
    boundaries: list[float] = field(default_factory=list)  # segment start times
    next_cut: float = 0.0
    # The previous frame: encoded once the next one says how long it lasts.
    held: tuple[VideoFrame, bool] | None = None
    held_time: float = -1.0
    thumbnail_at: float = 0.0
    thumbnail_done: bool = False
    resampler: av.AudioResampler | None = None
    early_audio: list[AudioFrame] = field(default_factory=list)  # before the first frame
    audio_samples: int = 0  # 48 kHz samples encoded so far: the next audio timestamp
    end: float = 0.0  # when the last frame stops showing: the length of the video


Step = Callable[[Transcode], None]


# ---------------------------------------------------------------------------- steps


def probe_source(job: Transcode) -> None:
    """Check the container's header against the limits before decoding anything."""
    job.info = probe(job.container, job.source, job.limits)
    job.progress = Progress(job.out, job.info.duration)
    job.progress.update(0, force=True)
    job.thumbnail_at = min(1.0, (job.info.duration or 0) / 4)


def read_first_frame(job: Transcode) -> None:
    """Decode up to the first video frame; audio before it waits for the encoders."""
    job.frames = decoded(job.container)
    for frame in job.frames:
        if isinstance(frame, VideoFrame):
            if frame.pts is not None and frame.time_base is not None:
                job.frame = frame
                job.first_time = float(frame.pts * frame.time_base)
                return
        elif isinstance(frame, AudioFrame) and job.info.has_audio:
            job.early_audio.append(frame)
    raise VideoError(422, "UndecodableMedia", "no video frame could be decoded")


def choose_ladder(job: Transcode) -> None:
    """The renditions from the upright size of the first frame (never upscaled), in
    meta.json; then one encoder each."""
    job.upright = Upright(job.frame)
    info = job.info
    info.width, info.height = job.upright.size(job.frame.width, job.frame.height)
    job.renditions = hls.ladder(info.width, info.height, info.fps)
    write_json(job.out / META_NAME, {
        "width": info.width, "height": info.height, "fps": hls.output_fps(info.fps),
        "duration": info.duration, "has_audio": info.has_audio, "loop": info.loop,
        "renditions": [asdict(r) | {"name": r.name} for r in job.renditions]})
    on_segment = partial(segment_written, job)
    job.writers = [RenditionWriter(job.out, r, info, job.limits, job.boundaries, on_segment)
                   for r in job.renditions]
    job.encoders = Encoders(job.writers, job.limits.held_frame_bytes)


def start_audio(job: Transcode) -> None:
    """Open the resampler (48 kHz stereo) and encode the audio that came before the
    first video frame."""
    job.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
    for frame in job.early_audio:
        encode_audio(job, frame)
    job.early_audio.clear()


def encode_frames(job: Transcode) -> None:
    """Every decoded frame, once: video through FRAME_STEPS, audio to the AAC encoder."""
    for frame in chain([job.frame], job.frames):
        if isinstance(frame, VideoFrame):
            job.frame = frame
            for step in FRAME_STEPS:
                step(job)
                if job.frame is None:
                    break
        elif isinstance(frame, AudioFrame) and job.info.has_audio:
            encode_audio(job, frame)


def finish_audio(job: Transcode) -> None:
    """Flush the resampler, then the AAC encoder."""
    if job.info.has_audio:
        encode_audio(job, None)
        job.writers[0].encode_audio(None, job.writers[1:])


def finish_video(job: Transcode) -> None:
    """The last frame lasts until the end of the video; then the renditions that were
    waiting for the first segment catch up."""
    job.end = _end(job.held_time, job.info)
    frame, key = job.held
    job.encoders.encode(frame, key, round((job.end - job.held_time) / VIDEO_TIME_BASE))
    job.encoders.release()


def last_thumbnail(job: Transcode) -> None:
    """A video shorter than the thumbnail's time gets its last frame as the thumbnail."""
    if not job.thumbnail_done:
        save_thumbnail(job.out, job.held[0], job.renditions[-1])


def close_renditions(job: Transcode) -> None:
    """The last segments, and every media playlist with #EXT-X-ENDLIST."""
    for writer in job.writers:
        writer.close(job.end)


def report_done(job: Transcode) -> None:
    write_json(job.out / STATE_NAME,
               {"state": "done", "progress": 100, "encoded_seconds": round(job.end, 3)})


PIPELINE: tuple[Step, ...] = (
    probe_source,
    read_first_frame,
    choose_ladder,
    start_audio,
    encode_frames,
    finish_audio,
    finish_video,
    last_thumbnail,
    close_renditions,
    report_done,
)


# ---------------------------------------------------------------------------- frame steps


def timestamp(job: Transcode) -> None:
    """Seconds since the first frame; a frame without a timestamp cannot be placed."""
    frame = job.frame
    if frame.pts is None or frame.time_base is None:
        job.frame = None
        return
    job.time = float(frame.pts * frame.time_base) - job.first_time


def turn_upright(job: Transcode) -> None:
    """Apply the display matrix (rotation, mirroring), as players would."""
    job.frame = job.upright(job.frame)


def check_length(job: Transcode) -> None:
    """Refuse a video that turns out longer than its header said."""
    if job.time > job.limits.max_seconds + 0.5:
        raise VideoError(422, "TooLong", f"video is longer than {job.limits.max_seconds:.0f} s")


def cap_rate(job: Transcode) -> None:
    """Drop duplicate and out-of-order timestamps, and frames above 60 fps."""
    if job.time < 0 or (job.held is not None
                        and job.time < job.held_time + MIN_FRAME_INTERVAL):
        job.frame = None


def cut_keyframes(job: Transcode) -> None:
    """A segment starts at the first frame on or after each boundary (edge/hls.py): a
    keyframe there in every rendition, so the renditions line up."""
    job.key = job.time >= job.next_cut
    if job.key:
        job.boundaries.append(job.time)
        job.next_cut = hls.next_boundary(job.time, 0.0)


def encode_held(job: Transcode) -> None:
    """A frame lasts until the next one (variable frame rates kept exactly): encode the
    held frame now that its duration is known, and hold this one."""
    frame = job.frame
    frame.pts = round(job.time / VIDEO_TIME_BASE)
    frame.time_base = VIDEO_TIME_BASE
    if job.held is not None:
        held, key = job.held
        job.encoders.encode(held, key, frame.pts - held.pts)
    job.held = (frame, job.key)
    job.held_time = job.time


def take_thumbnail(job: Transcode) -> None:
    """The thumbnail: the frame at 1 s, or a quarter of a shorter video, at the top size."""
    if not job.thumbnail_done and job.time >= job.thumbnail_at:
        save_thumbnail(job.out, job.frame, job.renditions[-1])
        job.thumbnail_done = True


def report_progress(job: Transcode) -> None:
    job.progress.update(job.time)


FRAME_STEPS: tuple[Step, ...] = (
    timestamp,
    turn_upright,
    check_length,
    cap_rate,
    cut_keyframes,
    encode_held,
    take_thumbnail,
    report_progress,
)


def transcode(source: Path, out: Path, limits: VideoLimits,
              steps: tuple[Step, ...] = PIPELINE) -> float:
    """Transcode ``source`` into HLS under ``out``; returns the seconds of video encoded."""
    container = open_source(source)
    try:
        job = Transcode(container, source, out, limits)
        for step in steps:
            step(job)
        return job.end
    finally:
        container.close()


# ---------------------------------------------------------------------------- the pieces


def segment_written(job: Transcode) -> None:
    """After each segment of any rendition. The master playlist appears with the first:
    by then the first second has decoded, which is where most corrupt files fail, before
    any viewer got a 200."""
    master = job.out / hls.MASTER_PLAYLIST
    if not master.exists():
        write_atomic(master, hls.master_playlist(job.renditions, job.info.has_audio))
    job.progress.update(job.held_time, force=True)


def encode_audio(job: Transcode, frame: AudioFrame | None) -> None:
    """Resample to 48 kHz stereo once; every rendition muxes the same AAC packets."""
    if frame is not None:
        frame.pts = None
    for chunk in job.resampler.resample(frame):
        chunk.pts = job.audio_samples
        chunk.time_base = Fraction(1, AUDIO_RATE)
        job.audio_samples += chunk.samples
        job.writers[0].encode_audio(chunk, job.writers[1:])


def _end(last: float, info: Probe) -> float:
    """When the last frame stops showing: the source's duration when it says so (a
    one-frame video may last a second), else one frame after the last one."""
    frame_time = min(1 / info.fps if info.fps else 1 / 30, 0.1)
    if info.duration and last < info.duration < last + 10:
        return max(info.duration, last + 0.001)
    return last + frame_time


def save_thumbnail(out: Path, frame: VideoFrame, top: hls.Rendition) -> None:
    image = frame.reformat(top.width, top.height, "rgb24").to_image()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    write_atomic(out / THUMBNAIL_NAME, buffer.getvalue())


# ---------------------------------------------------------------------------- probe


def open_source(path: Path) -> av.container.InputContainer:
    """Open a container; 415 when FFmpeg cannot and the bytes are no known media type at
    all (text, HTML, an archive: as /img answers), 422 for broken media."""
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__  # no server paths
        with open(path, "rb") as fh:
            kind = sniff(fh.read(SNIFF_BYTES))
        if not kind.startswith(("video/", "audio/", "image/")):
            raise VideoError(415, "UnsupportedMedia",
                             f"not a video: the bytes look like {kind}") from None
        raise VideoError(422, "UndecodableMedia",
                         f"not a readable video container: {reason}") from None


def rotation_filter(rotation: float, matrix: list[int] | None) -> str | None:
    """The filter chain that turns frames upright, as the ffmpeg CLI's autorotate does.

    ``rotation`` is libavutil's display rotation (counter-clockwise degrees, e.g. -90 for
    a phone held upright); ``matrix`` the 9 int32 of the display matrix (mirroring).
    """
    theta = (-rotation) % 360
    a, c, d = (matrix[0], matrix[3], matrix[4]) if matrix else (1, 0, 1)
    if abs(theta - 90) < 1:
        return "transpose=cclock_flip" if c > 0 else "transpose=clock"
    if abs(theta - 180) < 1:
        chain = [f for f, on in (("hflip", a < 0), ("vflip", d < 0)) if on]
        return ",".join(chain) or None
    if abs(theta - 270) < 1:
        return "transpose=clock_flip" if c < 0 else "transpose=cclock"
    if abs(theta) < 1 or abs(theta - 360) < 1:
        return "vflip" if matrix and d < 0 else None
    return None  # arbitrary angles are not used by cameras; leave the frame as is


def _matrix_of(frame: VideoFrame) -> list[int] | None:
    for side in frame.side_data:
        if side.type.name == "DISPLAYMATRIX":
            return list(struct.unpack("<9i", bytes(side)))
    return None


def probe(container: av.container.InputContainer, path: Path, limits: VideoLimits) -> Probe:
    """Check the source against the limits and describe it; raise VideoError otherwise."""
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise VideoError(413, "TooLarge", f"video is {size} bytes, the limit is {limits.max_bytes}")
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        raise VideoError(415, "UnsupportedMedia", "a still image is not a video")
    if not container.streams.video:
        raise VideoError(415, "UnsupportedMedia", "no video stream")
    vstream = container.streams.video[0]
    if vstream.codec_context is None or vstream.codec_context.name is None:
        raise VideoError(415, "UnsupportedMedia", "video codec not supported")
    for astream in container.streams.audio:
        if astream.codec_context is None or not astream.codec_context.name:
            raise VideoError(422, "UndecodableMedia", "audio stream without a decodable codec")
    width, height = vstream.codec_context.width, vstream.codec_context.height
    if width <= 0 or height <= 0:
        raise VideoError(422, "UndecodableMedia", "video stream has no dimensions")
    if width * height > limits.max_pixels:
        raise VideoError(422, "TooManyPixels",
                         f"{width}x{height} is more than {limits.max_pixels} pixels")
    duration = _duration(container, vstream)
    if duration is not None and duration > limits.max_seconds + 0.5:
        raise VideoError(422, "TooLong",
                         f"video is {duration:.1f} s long, the limit is {limits.max_seconds:.0f} s")
    rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
    fps = float(rate) if rate else 30.0
    if not 0 < fps < 1000:
        fps = 30.0
    return Probe(width, height, fps, duration, bool(container.streams.audio),
                 loop=container.format.name == "gif")


def _duration(container: av.container.InputContainer, vstream) -> float | None:
    if vstream.duration and vstream.time_base:
        return float(vstream.duration * vstream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None


# ---------------------------------------------------------------------------- decode


class Upright:
    """Turns decoded frames upright with the display matrix of the first frame."""

    def __init__(self, first: VideoFrame) -> None:
        self.graph: av.filter.Graph | None = None
        rotation = getattr(first, "rotation", 0) or 0
        self.chain = rotation_filter(rotation, _matrix_of(first))
        if self.chain is None:
            return
        graph = av.filter.Graph()
        src = graph.add_buffer(width=first.width, height=first.height, format=first.format.name,
                               time_base=first.time_base or Fraction(1, 90_000))
        last = src
        for step in self.chain.split(","):
            name, _, args = step.partition("=")
            node = graph.add(name, args or None)
            last.link_to(node)
            last = node
        sink = graph.add("buffersink")
        last.link_to(sink)
        graph.configure()
        self.graph = graph

    def __call__(self, frame: VideoFrame) -> VideoFrame:
        if self.graph is None:
            return frame
        self.graph.push(frame)
        return self.graph.pull()

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The size of a ``width`` x ``height`` frame once upright."""
        if self.chain and "transpose" in self.chain:
            return height, width
        return width, height


def decoded(container: av.container.InputContainer) -> Iterator[VideoFrame | AudioFrame]:
    """Every frame of the first video and audio streams, decoded once, in demux order."""
    vstream = container.streams.video[0]
    vstream.thread_type = "AUTO"
    streams = [vstream, *container.streams.audio[:1]]
    try:
        for packet in container.demux(streams):
            for frame in packet.decode():
                yield frame
    except av.FFmpegError as exc:
        raise VideoError(422, "UndecodableMedia", f"corrupt or truncated video: {exc}") from None


# ---------------------------------------------------------------------------- encode


class SegmentSink:
    """A write-only file for the fragmented-MP4 muxer that cuts its output into HLS files.

    The muxer writes ``ftyp moov`` (the init section) then one ``moof mdat`` fragment per
    keyframe; since a keyframe is forced exactly at each segment boundary, each fragment
    is one segment. Files appear atomically, so a reader never sees half a segment.
    """

    def __init__(self, folder: Path, on_segment: Callable[[int], None]) -> None:
        self.folder = folder
        self.on_segment = on_segment
        self.buffer = bytearray()
        self.init = bytearray()
        self.fragment = bytearray()
        self.init_written = False
        self.count = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= 8:
            size, kind = struct.unpack(">I4s", self.buffer[:8])
            if size == 1:
                if len(self.buffer) < 16:
                    break
                size = struct.unpack(">Q", self.buffer[8:16])[0]
            if size < 8 or len(self.buffer) < size:
                break
            box = bytes(self.buffer[:size])
            del self.buffer[:size]
            self._box(kind, box)
        return len(data)

    def _box(self, kind: bytes, box: bytes) -> None:
        if kind in (b"ftyp", b"moov") and not self.init_written:
            self.init += box
        elif kind == b"moof":
            if not self.init_written:
                write_atomic(self.folder / hls.INIT_NAME, bytes(self.init))
                self.init_written = True
            self.fragment = bytearray(box)
        elif kind == b"mdat" and self.fragment:
            write_atomic(self.folder / hls.segment_name(self.count), bytes(self.fragment) + box)
            self.fragment = bytearray()
            self.count += 1
            self.on_segment(self.count)
        # mfra/sidx after the last fragment are not needed by HLS players.

    def flush(self) -> None:
        pass


class RenditionWriter:
    """One rung: libx264 + AAC into a fragmented MP4 cut into segments, plus its playlist."""

    def __init__(self, root: Path, rendition: hls.Rendition, probe: Probe, limits: VideoLimits,
                 boundaries: list[float], on_segment: Callable[[], None]) -> None:
        self.rendition = rendition
        self.folder = root / rendition.name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.boundaries = boundaries
        self.notify = on_segment
        self.sink = SegmentSink(self.folder, self._segment_done)
        self.output = av.open(self.sink, "w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof+negative_cts_offsets",
            "flush_packets": "1",
        })
        r = rendition
        self.video = self.output.add_stream("libx264", rate=Fraction(r.fps).limit_denominator(1001))
        ctx = self.video.codec_context
        ctx.width, ctx.height, ctx.pix_fmt = r.width, r.height, "yuv420p"
        ctx.time_base = VIDEO_TIME_BASE
        self.video.time_base = VIDEO_TIME_BASE
        ctx.options = {
            "preset": X264_PRESET, "crf": str(X264_CRF), "profile": "high",
            "level": f"{r.level // 10}.{r.level % 10}",
            "maxrate": str(r.maxrate), "bufsize": str(r.bufsize),
            "forced-idr": "1", "sc_threshold": "0",
            "x264-params": "keyint=infinite:min-keyint=1:scenecut=0",
        }
        # Frame threads, as the ffmpeg CLI uses (PyAV defaults to x264's slower sliced ones).
        ctx.thread_type = "FRAME"
        if limits.threads:
            ctx.thread_count = limits.threads
        self.audio = None
        if probe.has_audio:
            self.audio = self.output.add_stream("aac", rate=AUDIO_RATE)
            self.audio.codec_context.layout = "stereo"
            self.audio.codec_context.bit_rate = hls.AUDIO_BITRATE
        self.frame_durations: dict[int, int] = {}
        self.end = 0.0

    def encode_video(self, frame: VideoFrame, key: bool) -> None:
        r = self.rendition
        out = frame.reformat(r.width, r.height, "yuv420p", interpolation="BILINEAR")
        out.pts, out.time_base, out.duration = frame.pts, frame.time_base, frame.duration
        out.pict_type = PictureType.I if key else PictureType.NONE
        self.frame_durations[out.pts] = frame.duration
        self._mux_video(self.video.encode(out))

    def _mux_video(self, packets: list[av.Packet]) -> None:
        # The muxer takes a sample's duration from its packet, which libx264 leaves unset:
        # without it the last frame of a segment (or of a one-frame video) has no length.
        for packet in packets:
            packet.duration = self.frame_durations.pop(packet.pts, packet.duration)
        self.output.mux(packets)

    def encode_audio(self, frame: AudioFrame | None, copies: list[RenditionWriter]) -> None:
        """Encode AAC once here and mux the same packets into ``copies`` as well (their
        encoders, opened with the same settings, only provide the stream parameters)."""
        if self.audio is None:
            return
        for packet in self.audio.encode(frame):
            for other in copies:
                other.mux_audio_copy(packet)
            self.output.mux(packet)

    def mux_audio_copy(self, packet: av.Packet) -> None:
        clone = av.Packet(bytes(packet))
        clone.pts, clone.dts, clone.duration = packet.pts, packet.dts, packet.duration
        clone.time_base = packet.time_base
        clone.stream = self.audio
        self.output.mux(clone)

    def close(self, end: float) -> None:
        self.end = end
        self._mux_video(self.video.encode(None))
        self.output.close()
        if self.sink.count != len(self.boundaries):
            raise VideoError(500, "TranscodeFailed",
                             f"{self.rendition.name}: {self.sink.count} segments for "
                             f"{len(self.boundaries)} keyframes")
        self._write_playlist(ended=True)

    def _segment_done(self, count: int) -> None:
        self._write_playlist(ended=False)
        self.notify()

    def _write_playlist(self, ended: bool) -> None:
        count = self.sink.count
        after = [self.end] if ended else self.boundaries[count:count + 1]
        edges = self.boundaries[:count] + after
        durations = [b - a for a, b in zip(edges, edges[1:])]
        if len(durations) < count:  # cannot happen: fragment k ends at keyframe k+1
            return
        write_atomic(self.folder / hls.MEDIA_PLAYLIST, hls.media_playlist(durations[:count], ended))


class Encoders:
    """Feeds every rendition the same frames, the lowest one first at the start.

    Fast start: until the lowest rendition has its first segment on disk, the other
    renditions' frames wait in memory (bounded), so the first playable segment costs
    decoding one second plus the cheapest encode; then they catch up. Keyframe decisions
    are made per frame before this point, so alignment does not depend on the order.
    """

    def __init__(self, writers: list[RenditionWriter], budget: int) -> None:
        self.lead, self.rest = writers[0], writers[1:]
        self.budget = budget  # bytes of held frames before giving up on the head start
        self.held: list[tuple[VideoFrame, bool]] = []
        self.held_bytes = 0
        self.holding = bool(self.rest)

    def encode(self, frame: VideoFrame, key: bool, duration: int) -> None:
        frame.duration = max(1, duration)
        self.lead.encode_video(frame, key)
        if not self.holding:
            for writer in self.rest:
                writer.encode_video(frame, key)
            return
        self.held.append((frame, key))
        self.held_bytes += frame.width * frame.height * 3 // 2
        if self.lead.sink.count > 0 or self.held_bytes > self.budget:
            self.release()

    def release(self) -> None:
        self.holding = False
        for frame, key in self.held:
            for writer in self.rest:
                writer.encode_video(frame, key)
        self.held.clear()


class Progress:
    """state.json: what /status reports, rewritten at most a few times a second."""

    def __init__(self, root: Path, duration: float | None) -> None:
        self.path = root / STATE_NAME
        self.duration = duration
        self.seconds = 0.0
        self.last = 0.0

    def update(self, seconds: float, force: bool = False) -> None:
        self.seconds = max(self.seconds, seconds)
        now = time.monotonic()
        if force or now - self.last > 0.5:
            self.last = now
            write_json(self.path, {"state": "running", "progress": self.percent(),
                                   "encoded_seconds": round(self.seconds, 3)})

    def percent(self) -> int:
        if not self.duration:
            return 0
        return max(0, min(99, int(100 * self.seconds / self.duration)))



# ---------------------------------------------------------------------------- child process


def run(source: Path, out: Path, limits: VideoLimits,
        locked: Callable[[], None] = lambda: None) -> int:
    """Child-process entry: lock, ``locked()`` (isolation), start clean, transcode, mark
    done or refused."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_NAME))
    try:
        # A short wait: other processes probe the lock for a moment to see if it is held.
        lock.acquire(timeout=2)
    except Timeout:
        return EXIT_BUSY  # another process of this node is on it
    try:
        locked()
        if (out / DONE_NAME).exists() or (out / ERROR_NAME).exists():
            return EXIT_DONE
        clear(out)
        print(f"transcode start pid={os.getpid()}", flush=True)  # the journal tests count
        try:
            seconds = transcode(source, out, limits)
        except VideoError as exc:
            clear(out)
            write_json(out / ERROR_NAME, exc.to_json())
            return EXIT_REFUSED
        except MemoryError:
            clear(out)
            write_json(out / ERROR_NAME, VideoError(
                422, "TooComplex", "decoding this video needs more memory than allowed").to_json())
            return EXIT_REFUSED
        write_atomic(out / DONE_NAME, json.dumps({"encoded_seconds": seconds}))
        return EXIT_DONE
    finally:
        lock.release()


def main(argv: list[str]) -> int:
    source, out, limits_json, user = argv
    limits = VideoLimits(**json.loads(limits_json))
    confine(limits.memory_bytes)
    # Off the network, and (as root) to the decoder user, who can reach neither the
    # source nor the output folder by path: the source is opened and the folder entered
    # (and given to that user) first (core/sandbox.py).
    fd = os.open(source, os.O_RDONLY)
    Path(out).mkdir(parents=True, exist_ok=True)
    ids = user_ids(user)
    if ids is not None:
        for path in (Path(out), *Path(out).rglob("*")):
            os.chown(path, *ids, follow_symlinks=False)
    os.chdir(out)

    def enter() -> None:  # with the lock held: it is taken by path
        for missing in isolate(user):
            print(f"transcoder not isolated: {missing}", file=sys.stderr, flush=True)

    return run(Path(f"/proc/self/fd/{fd}"), Path("."), limits, enter)
    # No PyAV log callback (its default): a callback needs the GIL from codec threads,
    # which deadlocks when a failed decoder is freed. FFmpeg logs to our stderr instead.
    av.logging.set_level(None)
    return run(Path(source), Path(out), limits)


if __name__ == "__main__":
    # Exit at once: everything was written atomically, and a normal interpreter exit can
    # hang on codec threads left behind by a failed decode or encode.
    try:
        code = main(sys.argv[1:])
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
