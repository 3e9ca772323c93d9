"""core/files.py: files that readers only ever see whole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from atcdn.core.files import write_atomic


def test_concurrent_writers_of_one_path_in_one_process(tmp_path: Path) -> None:
    """Two requests of one worker copying the same source at once (``/watch`` herds did):
    each rename finds its own temp file, and the file is always one whole value."""
    path = tmp_path / "blob"
    values = [bytes([n]) * 200_000 for n in range(8)]

    def write(n: int) -> None:
        for _ in range(40):
            write_atomic(path, values[n])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))  # re-raises a FileNotFoundError of any writer
    assert path.read_bytes() in values
    assert [p.name for p in tmp_path.iterdir()] == ["blob"]  # no temp file left
