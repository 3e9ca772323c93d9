"""Downloaded blobs on their way to the origin, on disk (memory stays bounded whatever the
blob size).

A download is written to a ``.partial-*`` file while it is hashed, and renamed to its CID
only once it verified, so a file named by a CID always holds exactly those bytes. A blob
fetched before a kill -9 but not yet stored at the origin is therefore used from here
after the restart, not fetched from its PDS again.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

CHUNK = 256 * 1024
STALE_AFTER = 24 * 3600.0
PARTIAL_STALE_AFTER = 3600.0  # longer than any download may take (another process's may run)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._clean()

    def _clean(self) -> None:
        """Drop interrupted downloads, and verified ones nobody came back for in a day."""
        now = time.time()
        for path in self.directory.iterdir():
            try:
                limit = PARTIAL_STALE_AFTER if path.name.startswith(".partial-") else STALE_AFTER
                if now - path.stat().st_mtime > limit:
                    path.unlink()
            except FileNotFoundError:
                pass

    def get(self, cid: str) -> Path | None:
        path = self.directory / cid
        return path if path.is_file() else None

    def partial(self, cid: str) -> Path:
        return self.directory / f".partial-{cid}-{secrets.token_hex(4)}"

    def keep(self, partial: Path, cid: str) -> Path:
        """A verified download becomes the spooled copy of ``cid``."""
        path = self.directory / cid
        os.replace(partial, path)
        return path

    def remove(self, cid: str) -> None:
        (self.directory / cid).unlink(missing_ok=True)


async def read_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as fh:
        while chunk := await fh.read(CHUNK):
            yield chunk
