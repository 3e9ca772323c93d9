"""Video to HLS with PyAV: decode the source once, encode every rendition from those frames.

This module runs in its own process (``python -m edge.video SOURCE OUTDIR LIMITS_JSON``),
started by edge/transcodes.py, so a decoder crash or a memory blow-up on hostile media
cannot take the edge down. The child holds the per-CID file lock for its whole life, which
is what makes a transcode single-flight across every worker process of a node.

The story of a transcode (``transcode``):
  open the source -> probe it against the limits -> choose the ladder (edge/hls.py) ->
  write the master playlist -> decode each frame once, turn it upright, cap its rate ->
  force a keyframe at every segment boundary (same frames for every rendition) ->
  encode each rendition (libx264 + AAC-LC stereo) into a fragmented MP4 whose fragments
  are cut into init.mp4 + segNNNNN.m4s files as they appear -> rewrite each growing
  media playlist after every segment -> at the end add #EXT-X-ENDLIST and write ``done``.

Directory of one transcode (``{cache_dir}/video/{cid}/``): ``playlist.m3u8``,
``meta.json``, ``state.json``, ``thumbnail.jpg``, ``{rendition}/init.mp4``,
``{rendition}/segNNNNN.m4s``, ``{rendition}/index.m3u8``, then ``done`` (written last), or
``error.json`` when the source is refused.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
from atcdn.core.files import write_atomic, write_json
from atcdn.edge import hls
from av.audio.frame import AudioFrame
from av.video.frame import PictureType, VideoFrame
from filelock import FileLock, Timeout

VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_RATE = 48_000
X264_PRESET = "veryfast"
X264_CRF = 23
LOCK_NAME = ".lock"
DONE_NAME = "done"
ERROR_NAME = "error.json"
STATE_NAME = "state.json"
META_NAME = "meta.json"
THUMBNAIL_NAME = "thumbnail.jpg"
# Exit codes of the child process.
EXIT_DONE, EXIT_REFUSED, EXIT_BUSY = 0, 2, 3


@dataclass(frozen=True)
class Limits:
    """What a transcode may cost; from EdgeSettings."""

    max_bytes: int = 300 * 1024 * 1024
    max_seconds: float = 600.0
    max_pixels: int = 3840 * 2160
    memory_bytes: int = 3 * 1024**3
    threads: int = 0  # x264 threads per rendition; 0 = let x264 choose


class VideoError(Exception):
    """A refused or undecodable source; ``status`` is the honest HTTP code."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message

    def to_json(self) -> dict:
        return {"status": self.status, "error": self.error, "message": self.message}


@dataclass
class Probe:
    """What the transcode needs to know about the source before decoding it."""

    width: int  # displayed, rotation applied
    height: int
    fps: float
    duration: float | None
    has_audio: bool
    loop: bool  # animated GIFs: players should loop them


# ---------------------------------------------------------------------------- probe


def open_source(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__  # no server paths
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


def probe(container: av.container.InputContainer, path: Path, limits: Limits) -> Probe:
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
    """Turns decoded frames upright with the rotation of the display matrix."""

    def __init__(self) -> None:
        self.graph: av.filter.Graph | None = None
        self.chain: str | None = None
        self.ready = False

    def setup(self, frame: VideoFrame) -> None:
        self.ready = True
        rotation = getattr(frame, "rotation", 0) or 0
        self.chain = rotation_filter(rotation, _matrix_of(frame))
        if self.chain is None:
            return
        graph = av.filter.Graph()
        src = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                               time_base=frame.time_base or Fraction(1, 90_000))
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
        if not self.ready:
            self.setup(frame)
        if self.graph is None:
            return frame
        self.graph.push(frame)
        return self.graph.pull()

    def size(self, width: int, height: int) -> tuple[int, int]:
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

    def __init__(self, root: Path, rendition: hls.Rendition, probe: Probe, limits: Limits,
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


# ---------------------------------------------------------------------------- story


def transcode(source: Path, out: Path, limits: Limits) -> float:
    """Transcode ``source`` into HLS under ``out``; returns the seconds of video encoded."""
    container = open_source(source)
    try:
        return _transcode(container, source, out, limits)
    finally:
        container.close()


def _transcode(container, source: Path, out: Path, limits: Limits) -> float:
    info = probe(container, source, limits)
    progress = Progress(out, info.duration)
    progress.update(0, force=True)
    upright = Upright()
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
    boundaries: list[float] = []
    writers: list[RenditionWriter] = []
    first_pts: float | None = None
    last_video = -1.0
    next_cut = 0.0
    audio_samples = 0
    thumb_at = min(1.0, (info.duration or 0) / 4)
    thumb_done = False
    min_interval = 1 / hls.MAX_FPS * 0.9
    pending_audio: list[AudioFrame] = []
    last_frame: VideoFrame | None = None
    held: tuple[VideoFrame, bool] | None = None

    def on_segment() -> None:
        # The master playlist appears with the first segment: by then the first second has
        # decoded, which is where most corrupt files fail, before any viewer got a 200.
        master = out / hls.MASTER_PLAYLIST
        if not master.exists():
            renditions = [w.rendition for w in writers]
            write_atomic(master, hls.master_playlist(renditions, info.has_audio))
        progress.update(last_video, force=True)

    for frame in decoded(container):
        if isinstance(frame, VideoFrame):
            if frame.pts is None or frame.time_base is None:
                continue
            t = float(frame.pts * frame.time_base)
            if first_pts is None:
                first_pts = t
                frame = upright(frame)
                width, height = frame.width, frame.height
                writers = _start(out, width, height, info, limits, boundaries, on_segment)
                encoders = Encoders(writers)
            else:
                frame = upright(frame)
            t -= first_pts
            if t > limits.max_seconds + 0.5:
                raise VideoError(422, "TooLong", f"video is longer than {limits.max_seconds:.0f} s")
            if t < last_video + (min_interval if last_video >= 0 else 0) or t < 0:
                continue  # duplicate/out-of-order timestamp, or above 60 fps
            key = t >= next_cut
            if key:
                boundaries.append(t)
                next_cut = hls.next_boundary(t, 0.0)
            frame.pts = round(t / VIDEO_TIME_BASE)
            frame.time_base = VIDEO_TIME_BASE
            if held is not None:  # a frame lasts until the next one: VFR kept exactly
                encoders.encode(held[0], held[1], frame.pts - held[0].pts)
            held = (frame, key)
            last_video = t
            last_frame = frame
            if not thumb_done and t >= thumb_at:
                _thumbnail(out, frame, writers[-1].rendition)
                thumb_done = True
            for audio in pending_audio:
                audio_samples = _audio(writers, resampler, audio, audio_samples)
            pending_audio.clear()
            progress.update(t)
        elif isinstance(frame, AudioFrame) and info.has_audio:
            if not writers:
                pending_audio.append(frame)  # audio demuxed before the first video frame
            else:
                audio_samples = _audio(writers, resampler, frame, audio_samples)
    if first_pts is None or last_frame is None or held is None:
        raise VideoError(422, "UndecodableMedia", "no video frame could be decoded")
    if info.has_audio and audio_samples == 0 and pending_audio:
        for audio in pending_audio:
            audio_samples = _audio(writers, resampler, audio, audio_samples)
    if info.has_audio:
        audio_samples = _audio(writers, resampler, None, audio_samples)
        writers[0].encode_audio(None, writers[1:])
    end = _end(last_video, info)
    encoders.encode(held[0], held[1], round((end - last_video) / VIDEO_TIME_BASE))
    encoders.release()
    if not thumb_done:
        _thumbnail(out, last_frame, writers[-1].rendition)
    for writer in writers:
        writer.close(end)
    write_json(out / STATE_NAME,
               {"state": "done", "progress": 100, "encoded_seconds": round(end, 3)})
    return end


def _start(out: Path, width: int, height: int, info: Probe, limits: Limits,
           boundaries: list[float], on_segment: Callable[[], None]) -> list[RenditionWriter]:
    """Choose the ladder from the upright size, write meta.json, open the encoders."""
    info.width, info.height = width, height
    renditions = hls.ladder(width, height, info.fps)
    meta = {"width": width, "height": height, "fps": hls.output_fps(info.fps),
            "duration": info.duration, "has_audio": info.has_audio, "loop": info.loop,
            "renditions": [asdict(r) | {"name": r.name} for r in renditions]}
    write_json(out / META_NAME, meta)
    return [RenditionWriter(out, r, info, limits, boundaries, on_segment) for r in renditions]


class Encoders:
    """Feeds every rendition the same frames, the lowest one first at the start.

    Fast start: until the lowest rendition has its first segment on disk, the other
    renditions' frames wait in memory (bounded), so the first playable segment costs
    decoding one second plus the cheapest encode; then they catch up. Keyframe decisions
    are made per frame before this point, so alignment does not depend on the order.
    """

    BUDGET = 256 * 1024 * 1024  # bytes of held frames before giving up on the head start

    def __init__(self, writers: list[RenditionWriter]) -> None:
        self.lead, self.rest = writers[0], writers[1:]
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
        if self.lead.sink.count > 0 or self.held_bytes > self.BUDGET:
            self.release()

    def release(self) -> None:
        self.holding = False
        for frame, key in self.held:
            for writer in self.rest:
                writer.encode_video(frame, key)
        self.held.clear()


def _end(last: float, info: Probe) -> float:
    """When the last frame stops showing: the source's duration when it says so (a
    one-frame video may last a second), else one frame after the last one."""
    frame_time = min(1 / info.fps if info.fps else 1 / 30, 0.1)
    if info.duration and last < info.duration < last + 10:
        return max(info.duration, last + 0.001)
    return last + frame_time


def _audio(writers: list[RenditionWriter], resampler: av.AudioResampler,
           frame: AudioFrame | None, samples: int) -> int:
    """Resample to 48 kHz stereo once; every rendition encodes the same samples."""
    if frame is not None:
        frame.pts = None
    for chunk in resampler.resample(frame):
        chunk.pts = samples
        chunk.time_base = Fraction(1, AUDIO_RATE)
        samples += chunk.samples
        writers[0].encode_audio(chunk, writers[1:])
    return samples


def _thumbnail(out: Path, frame: VideoFrame, top: hls.Rendition) -> None:
    image = frame.reformat(top.width, top.height, "rgb24").to_image()
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    write_atomic(out / THUMBNAIL_NAME, buffer.getvalue())


# ---------------------------------------------------------------------------- child process


def clear(out: Path) -> None:
    """Remove what an interrupted transcode left (everything but the lock file)."""
    for child in out.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def run(source: Path, out: Path, limits: Limits) -> int:
    """Child-process entry: lock, start clean, transcode, mark done or refused."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_NAME))
    try:
        # A short wait: other processes probe the lock for a moment to see if it is held.
        lock.acquire(timeout=2)
    except Timeout:
        return EXIT_BUSY  # another process of this node is on it
    try:
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


def _limit_memory(limit: int) -> None:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str]) -> int:
    source, out, limits_json = argv
    limits = Limits(**json.loads(limits_json))
    _limit_memory(limits.memory_bytes)
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
