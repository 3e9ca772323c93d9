"""Cold image transforms: our pipeline vs sharp (npm), images per second per core.

    python bench/images.py [--rounds N] [--quick]

Both sides resize the same 1-4 MP JPEGs (made from ../shared/corpus/photo when present,
else synthesised) for the feed_thumbnail, feed_fullsize, avatar and avatar_thumbnail
presets to JPEG q80, one image at a time on one core: ours in this process (Pillow,
render() of edge/image.py), sharp with sharp.concurrency(1) and its cache off. Speed is
CPU seconds per image (robust on a shared machine); wall-clock figures are printed too.
"ours*" is the same pipeline with the no-re-encode JPEG path disabled, so every image
is decoded, resized and encoded as sharp does.

sharp is installed into bench/node/ (not committed): npm install --prefix bench/node
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atcdn.edge.image import PIPELINE, copy_compliant_jpeg, render  # noqa: E402
from atcdn.edge.presets import DEFAULT_PRESETS  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

NODE_DIR = ROOT / "bench" / "node"
WORK = ROOT / "bench" / "results" / "images"
CORPUS = Path(os.environ.get("ATCDN_CORPUS", ROOT.parent / "shared" / "corpus"))
PRESETS = ("feed_thumbnail", "feed_fullsize", "avatar", "avatar_thumbnail")
# 1.2, 2, 3 and 4 megapixels, 3:2 and 4:3, landscape and portrait.
SIZES = ((1280, 960), (1152, 1728), (2121, 1414), (2400, 1600))
REENCODE = tuple(step for step in PIPELINE if step is not copy_compliant_jpeg)


def make_sources() -> list[Path]:
    """The bench JPEGs (q90 4:2:0 like a camera's), from real photos when we have them."""
    WORK.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in (CORPUS / "photo").glob("*.jpg")
                    if p.stat().st_size > 200_000)
    files = []
    for index, size in enumerate(SIZES):
        path = WORK / f"source-{size[0]}x{size[1]}.jpg"
        if not path.exists():
            if photos:
                image = Image.open(photos[index % len(photos)]).convert("RGB")
                image = crop_to(image, size)
            else:
                image = synthetic(size, seed=index)
            image.save(path, "JPEG", quality=90)
        files.append(path)
    return files


def crop_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    width, height = image.size
    scale = max(size[0] / width, size[1] / height)
    image = image.resize((round(width * scale) + 1, round(height * scale) + 1),
                         Image.Resampling.LANCZOS)
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def synthetic(size: tuple[int, int], seed: int) -> Image.Image:
    """Gradients, shapes and noise: compresses like a photo, not like a flat test card."""
    rng = random.Random(seed)
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(300):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(10, size[0] // 6)
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=tuple(rng.randrange(256) for _ in range(3)))
    image = image.filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise(size, 24).convert("RGB")
    return Image.blend(image, noise, 0.15)


def ours(files: list[Path], preset: str, rounds: int, steps) -> dict:
    buffers = [f.read_bytes() for f in files]
    spec = DEFAULT_PRESETS[preset]
    for data in buffers:
        render(data, spec, "jpeg", steps=steps)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for data in buffers:
            render(data, spec, "jpeg", steps=steps)
    return {"images": rounds * len(buffers), "cpu": time.process_time() - cpu0,
            "wall": time.perf_counter() - wall0}


def sharp(files: list[Path], rounds: int) -> dict | None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "sharp").is_dir():
        print("sharp not installed: npm install --prefix bench/node", file=sys.stderr)
        return None
    presets = {name: [DEFAULT_PRESETS[name].width, DEFAULT_PRESETS[name].height,
                      DEFAULT_PRESETS[name].fit, DEFAULT_PRESETS[name].quality]
               for name in PRESETS}
    job = {"presets": presets, "files": [str(f) for f in files], "rounds": rounds}
    env = {**os.environ, "UV_THREADPOOL_SIZE": "1", "VIPS_CONCURRENCY": "1"}
    out = subprocess.run([node, str(NODE_DIR / "resize.js"), json.dumps(job)], cwd=NODE_DIR,
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def rate(result: dict, key: str) -> float:
    return result["images"] / result[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    files = make_sources()
    peer = sharp(files, args.rounds)
    report = {}
    print(f"{len(files)} JPEGs {', '.join(f'{w}x{h}' for w, h in SIZES)}; "
          f"{args.rounds} rounds; img/s per core (CPU time), wall-clock in brackets")
    print(f"{'preset':18} {'ours':>16} {'ours*':>16} {'sharp':>16} {'ratio':>7} {'ratio*':>7}")
    for preset in PRESETS:
        mine = ours(files, preset, args.rounds, PIPELINE)
        reencode = ours(files, preset, args.rounds, REENCODE)
        row = {"ours": mine, "ours_reencode": reencode, "sharp": peer and peer[preset]}
        report[preset] = row

        def cell(result: dict | None) -> str:
            if not result:
                return "-"
            return f"{rate(result, 'cpu'):6.1f} ({rate(result, 'wall'):5.1f})"

        ratio = ratio_all = "-"
        if peer:
            ratio = f"{rate(mine, 'cpu') / rate(peer[preset], 'cpu'):.2f}x"
            ratio_all = f"{rate(reencode, 'cpu') / rate(peer[preset], 'cpu'):.2f}x"
        print(f"{preset:18} {cell(mine):>16} {cell(reencode):>16} {cell(row['sharp']):>16} "
              f"{ratio:>7} {ratio_all:>7}")
    (WORK / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
