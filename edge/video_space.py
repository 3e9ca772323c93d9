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

A stranger's videos are kept within its shares (issue 9, hole 1), as its blobs are in the
disk tier (edge/shares.py): a video whose source was charged to a DID and a PDS is theirs
(``own`` records it in ``{cid}.owner`` when the transcode is asked for), and the videos of
a DID hold at most ``share_did`` of the video budget, those of a PDS ``share_pds``. Past
its share a subject's *own* least recently used videos go first (``over_shares``); only
then, if all still do not fit, the least recently used of all. The operator's videos are
nobody's: a stranger asking for many transcodes pushes out its own, never theirs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from atcdn.core.files import write_json
from atcdn.core.quotas import over_budget, over_shares
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
    owner: tuple[str, ...] = ()  # (DID, PDS subject) a stranger's video is charged to


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
    def __init__(self, root: Path, budget: int, stale: float,
                 share_did: float = 1.0, share_pds: float = 1.0) -> None:
        self.root = root
        self.budget = budget
        self.stale = stale
        self.share_did = int(share_did * budget)  # bytes of videos one DID may hold
        self.share_pds = int(share_pds * budget)
        self._touched: dict[str, float] = {}

    def own(self, cid: str, owner: tuple[str, str] | None) -> None:
        """Record whose video ``cid`` is: the (DID, PDS) its source was charged to, or
        nobody (the operator's)."""
        path = self.root / f"{cid}.owner"
        if owner is None:
            path.unlink(missing_ok=True)
        else:
            write_json(path, list(owner))

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
                    elif entry.name.endswith(".owner"):
                        v = video(entry.name[:-6])
                        v.size += entry.stat().st_size
                        v.owner = tuple(json.loads(Path(entry.path).read_text()))
                except (FileNotFoundError, ValueError):
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
                              else entry.name)  # ".{cid}.{pid}.{random}.tmp": being written
                    v.size += stat.st_size
                    v.used = max(v.used, stat.st_mtime)
        return videos

    def used(self) -> int:
        return sum(v.size for v in self.videos().values())

    def trim(self) -> list[str]:
        """Remove each stranger's own least recently used videos past its shares, then
        the least recently used of all until all fit the budget; their CIDs."""
        videos = self.videos()
        total = sum(v.size for v in videos.values())
        order = sorted((v for v in videos.values() if v.removable), key=lambda v: v.used)
        held: Counter[str] = Counter()
        for v in videos.values():  # transcodes in progress included
            for subject in v.owner:
                held[subject] += v.size
        shares = {subject: self.share_did if subject.startswith("did:") else self.share_pds
                  for subject in sorted(held, key=lambda s: not s.startswith("did:"))}
        victims = over_shares([(v.cid, v.size, v.owner) for v in order], held, shares)
        total -= sum(videos[cid].size for cid in victims)
        victims += over_budget(((v.cid, v.size) for v in order if v.cid not in victims),
                               total, self.budget)
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
        (self.root / f"{cid}.owner").unlink(missing_ok=True)
