"""The folder of one video transcode, shared by the transcoder child and the server.

``{cache_dir}/video/{cid}/`` holds, in the order they appear: ``.lock`` (held by the child
for the whole transcode), ``state.json`` (progress), ``meta.json`` (size, frame rate,
renditions), ``thumbnail.jpg``, ``{rendition}/init.mp4``, ``{rendition}/segNNNNN.m4s``,
``{rendition}/index.m3u8``, ``playlist.m3u8`` (with the first segment), then ``done``
(written last), or ``error.json`` when the source is refused.

No PyAV here: the server (edge/transcodes.py, edge/watch.py) reads these files, only the
child (``python -m atcdn.edge.video``, edge/video.py) decodes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from atcdn.core.errors import AtcdnError
from filelock import FileLock, Timeout

LOCK_NAME = ".lock"
DONE_NAME = "done"
ERROR_NAME = "error.json"
STATE_NAME = "state.json"
META_NAME = "meta.json"
THUMBNAIL_NAME = "thumbnail.jpg"
# Exit codes of the child process.
EXIT_DONE, EXIT_REFUSED, EXIT_BUSY = 0, 2, 3


class VideoError(AtcdnError):
    """A refused or undecodable source; ``status`` is the honest HTTP code. Stored as
    ``error.json`` (``to_json``) for every later request for the video."""


def is_locked(folder: Path) -> bool:
    """Whether a transcode (in any process of this node) holds this video's lock."""
    if not (folder / LOCK_NAME).exists():
        return False
    lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def unless_locked(folder: Path, action: Callable[[Path], object]) -> None:
    """``action(folder)`` holding the video's lock, unless a transcode holds it."""
    lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return
    try:
        action(folder)
    finally:
        lock.release()


def clear(out: Path) -> None:
    """Remove what an interrupted transcode left (everything but the lock file)."""
    for child in out.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
