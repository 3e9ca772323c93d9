"""Node packages the real-peer tests run (tests/pds, tests/browser): installed from their
committed lockfiles with ``npm ci`` the first time a test needs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from filelock import FileLock

from tests.helpers.env import need, need_tool

TESTS = Path(__file__).resolve().parents[1]
# better-sqlite3 (the PDS's database) compiles against these headers when no prebuilt
# binary can be fetched; pointing node-gyp at them keeps it from downloading its own.
NODE_HEADERS = Path("/usr/include/node/node.h")


def npm_package(name: str, timeout: float = 600.0) -> Path:
    """The directory of tests/<name> with its node_modules installed, or skip (fail in
    strict mode) when node/npm are missing or the install fails."""
    need_tool("node")
    npm = need_tool("npm")
    folder = TESTS / name
    # Parallel test processes must not run two installs into one folder.
    with FileLock(str(folder / ".npm-install.lock")):
        if not (folder / "node_modules" / ".package-lock.json").exists():
            env = dict(os.environ)
            if NODE_HEADERS.exists():
                env.setdefault("npm_config_nodedir", "/usr")
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], check=False, cwd=folder, timeout=timeout,
                capture_output=True, text=True, env=env,
            )
            need(done.returncode == 0,
                 f"npm ci in {folder} failed: {(done.stdout + done.stderr)[-2000:]}")
    return folder
