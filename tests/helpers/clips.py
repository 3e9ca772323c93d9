"""Short video fixtures made in code with PyAV (and Pillow for GIFs), so the video tests
run without the corpus."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def make_clip(path: Path, *, width: int = 640, height: int = 360, seconds: float = 3.0,
              fps: int = 30, audio: bool = True, rotation: int = 0,
              codec: str = "libx264") -> Path:
    """A moving test pattern (and a 440 Hz tone) with an optional display rotation."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.options = {"preset": "ultrafast"} if codec == "libx264" else {}
        if rotation:
            video.set_display_rotation(rotation)
        tone = None
        if audio:
            tone = out.add_stream("aac", rate=48000)
            tone.codec_context.layout = "stereo"
        frames = int(seconds * fps)
        for i in range(frames):
            rgb = np.zeros((height, width, 3), dtype=np.uint8)
            rgb[:, :, 0] = (np.arange(width) * 255 // max(1, width - 1))[None, :]
            x = (i * 7) % max(1, width - 16)
            rgb[: height // 2, x:x + 16, 1] = 255  # a bar moving in the top half: "up" is visible
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if tone is not None:
            samples = int(seconds * 48000)
            t = np.arange(samples) / 48000
            wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = wave[start:start + 1024]
                frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp",
                                                   layout="stereo")
                frame.sample_rate = 48000
                frame.pts = start
                frame.time_base = Fraction(1, 48000)
                out.mux(tone.encode(frame))
            out.mux(tone.encode(None))
    return path


def make_gif(path: Path, *, width: int = 160, height: int = 120, frames: int = 12,
             delay_ms: int = 100) -> Path:
    """An animated, looping GIF with a moving square."""
    images = []
    for i in range(frames):
        image = Image.new("RGB", (width, height), (20, 40, 200))
        x = (i * 11) % (width - 20)
        image.paste((250, 200, 0), (x, 10, x + 20, 30))
        images.append(image)
    images[0].save(path, save_all=True, append_images=images[1:], duration=delay_ms, loop=0)
    return path
