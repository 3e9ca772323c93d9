"""``atcdn cid`` and ``atcdn push``: name files by their blob CID, store them in an origin.

``push`` takes files and directories (walked recursively, hidden files skipped), hashes
each file while streaming it (``PUT /blob/{cid}``: the origin checks the CID again), and
shows a progress bar of bytes on a terminal, plain lines otherwise. stdout gets one line
per stored file, ``CID SIZE PATH``, so scripts can use it; failures go to stderr and make
the exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import httpx
from atcdn.core.cid import Verifier
from atcdn.core.settings import PushSettings

CHUNK = 1 << 20


def file_cid(stream: BinaryIO) -> tuple[str, int]:
    """(CID, size) of everything ``stream`` holds, read in chunks."""
    verifier = Verifier()
    while chunk := stream.read(CHUNK):
        verifier.update(chunk)
    return verifier.cid, verifier.size


def print_cid(name: str) -> None:
    if name == "-":
        cid, _ = file_cid(sys.stdin.buffer)
    else:
        try:
            with open(name, "rb") as fh:
                cid, _ = file_cid(fh)
        except OSError as exc:
            raise SystemExit(f"atcdn cid: {name}: {exc.strerror}") from None
    print(cid)


def files_of(paths: Iterable[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file()
                              and not any(part.startswith(".") for part in
                                          p.relative_to(path).parts))
        elif path.is_file():
            yield path
        else:
            raise SystemExit(f"atcdn push: {name}: no such file or directory")


def _token(settings: PushSettings) -> str:
    if settings.token_file is not None:
        try:
            return settings.token_file.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"atcdn push: {settings.token_file}: {exc.strerror}") from None
    if settings.token:
        return settings.token
    raise SystemExit("atcdn push: no token: set ATCDN_ORIGIN_TOKEN or give --token-file")


def push(paths: list[str], settings: PushSettings, *, fancy: bool | None = None) -> int:
    """Store every file; the exit status (0 all stored, 1 some failed)."""
    files = list(files_of(paths))
    total = sum(path.stat().st_size for path in files)
    headers = {"Authorization": f"Bearer {_token(settings)}"}
    params = {"did": settings.did} if settings.did else {}
    fancy = sys.stderr.isatty() if fancy is None else fancy
    report = _Bar(len(files), total) if fancy else _Lines(len(files), total)
    failures = 0
    with httpx.Client(base_url=settings.origin.rstrip("/"), headers=headers,
                      timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False) as client:

        def store(path: Path) -> tuple[Path, str, int, str | None]:
            with open(path, "rb") as fh:
                cid, size = file_cid(fh)
            try:
                with open(path, "rb") as fh:
                    answer = client.put(f"/blob/{cid}", params=params,
                                        content=_read(fh, report.advance))
            except httpx.HTTPError as exc:
                return path, cid, size, f"{type(exc).__name__}: {exc}"
            if answer.status_code not in (200, 201):
                return path, cid, size, f"HTTP {answer.status_code} {answer.text[:200]}"
            return path, cid, size, None

        with report, ThreadPoolExecutor(settings.concurrency) as pool:
            for path, cid, size, problem in pool.map(store, files):
                report.done(path, problem)
                if problem is None:
                    print(f"{cid} {size} {path}", flush=True)
                else:
                    failures += 1
                    if problem.startswith("HTTP 401"):
                        problem += " (is the token the origin's ATCDN_ORIGIN_TOKEN?)"
                    print(f"atcdn push: {path}: {problem}", file=sys.stderr)
    return 1 if failures else 0


def _read(fh: BinaryIO, advance) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        advance(len(chunk))
        yield chunk


class _Bar:
    """A rich progress bar of bytes and files, on stderr."""

    def __init__(self, count: int, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.count = count
        self.stored = 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self.task = self.progress.add_task(f"0/{count} files", total=total)

    def __enter__(self) -> "_Bar":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def advance(self, size: int) -> None:
        self.progress.advance(self.task, size)

    def done(self, path: Path, problem: str | None) -> None:
        self.stored += 1
        self.progress.update(self.task, description=f"{self.stored}/{self.count} files")


class _Lines:
    """Plain progress lines on stderr when it is not a terminal (logs, CI)."""

    def __init__(self, count: int, total: int) -> None:
        self.count = count
        self.total = total
        self.stored = 0

    def __enter__(self) -> "_Lines":
        print(f"pushing {self.count} files, {self.total} bytes", file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        print(f"done: {self.stored}/{self.count} files", file=sys.stderr, flush=True)

    def advance(self, size: int) -> None:
        pass

    def done(self, path: Path, problem: str | None) -> None:
        self.stored += 1
        state = "failed" if problem else "stored"
        print(f"[{self.stored}/{self.count}] {state} {path}", file=sys.stderr, flush=True)
