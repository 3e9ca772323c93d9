"""The disk space of ``/watch``: transcodes, their sources and refusals, in the budget.

A node's ``cache_size`` is split: ``video_share`` of it for ``{cache_dir}/video`` (every
video's folder of outputs or ``error.json``, its ``{cid}.log`` and its copied source
``sources/{cid}``), the rest for the disk tier (``split``). ``trim`` counts what each
video holds and removes whole videos, least recently used first (a folder's mtime,
refreshed at most once a second per worker by ``touch`` when it is served), until the
videos fit. A transcode in progress (its lock held) is counted but never removed, nor is
a folder younger than ``stale`` seconds without ``done`` or ``error.json`` (queued, its
source still needed); an older one is what an interrupted transcode left. Removal takes
the video's lock, so no transcode starts in a folder being removed; a removed video is
transcoded again when asked for.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from atcdn.core.quotas import over_budget
from atcdn.edge.transcode_files import DONE_NAME, ERROR_NAME, is_locked, unless_locked

TOUCH_EVERY = 1.0  # seconds between marks of a video as used, per worker
SKIP = frozenset({"slots", "sources"})


def split(cache_size: int, video_share: float) -> tuple[int, int]:
    """(disk tier budget, video budget) of a node's ``cache_size``."""
    video = int(cache_size * video_share)
    return cache_size - video, video


@dataclass
class Video:
    cid: str
    size: int = 0
    used: float = 0.0
    removable: bool = True


def _tree_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


class VideoSpace:
    def __init__(self, root: Path, budget: int, stale: float) -> None:
        self.root = root
        self.budget = budget
        self.stale = stale
        self._touched: dict[str, float] = {}

    def touch(self, cid: str) -> None:
        """Mark a video as used (served); cheap enough for every request."""
        now = time.monotonic()
        if now - self._touched.get(cid, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        if len(self._touched) > 100_000:
            self._touched.clear()
        self._touched[cid] = now
        try:
            os.utime(self.root / cid)
        except OSError:
            pass

    def videos(self) -> dict[str, Video]:
        """What every video holds on disk, and whether it may be removed."""
        videos: dict[str, Video] = {}
        now = time.time()

        def video(cid: str) -> Video:
            return videos.setdefault(cid, Video(cid))

        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False) and entry.name not in SKIP:
                        v = video(entry.name)
                        folder = Path(entry.path)
                        v.size += _tree_size(folder)
                        v.used = max(v.used, entry.stat().st_mtime)
                        finished = (folder / DONE_NAME).exists() or (folder / ERROR_NAME).exists()
                        if is_locked(folder) or (not finished and now - v.used < self.stale):
                            v.removable = False
                    elif entry.name.endswith(".log"):
                        video(entry.name[:-4]).size += entry.stat().st_size
                except FileNotFoundError:
                    continue
        sources = self.root / "sources"
        if sources.is_dir():
            with os.scandir(sources) as entries:
                for entry in entries:
                    try:
                        stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    v = video(entry.name.split(".")[1] if entry.name.startswith(".")
                              else entry.name)  # ".{cid}.{pid}.tmp": being written
                    v.size += stat.st_size
                    v.used = max(v.used, stat.st_mtime)
        return videos

    def used(self) -> int:
        return sum(v.size for v in self.videos().values())

    def trim(self) -> list[str]:
        """Remove least recently used videos until all fit the budget; their CIDs."""
        videos = self.videos()
        total = sum(v.size for v in videos.values())
        order = sorted((v for v in videos.values() if v.removable), key=lambda v: v.used)
        victims = over_budget(((v.cid, v.size) for v in order), total, self.budget)
        for cid in victims:
            self.remove(cid)
        return victims

    def remove(self, cid: str) -> None:
        folder = self.root / cid
        if folder.is_dir():
            unless_locked(folder, lambda f: shutil.rmtree(f, ignore_errors=True))
            if folder.exists():  # a transcode took it over meanwhile: leave it all
                return
        (self.root / f"{cid}.log").unlink(missing_ok=True)
        (self.root / "sources" / cid).unlink(missing_ok=True)
