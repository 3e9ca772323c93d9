"""The reference PDS and its PLC directory (tests/pds/harness.js) as real test peers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers.npm import npm_package
from tests.helpers.servers import Process

ADMIN = "admin"


def read_harness_line(proc: Process, log: Path, timeout: float = 120.0) -> dict:
    """The harness's one JSON line; fail early if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"PDS harness exited with {proc.popen.returncode}: {proc.tail()}")
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"plcUrl"'):
                return json.loads(line)
        time.sleep(0.2)
    raise TimeoutError(f"PDS harness did not start within {timeout}s: {proc.tail()}")


@contextmanager
def running_pds(work: Path, files: list[Path],
                env: Mapping[str, str] | None = None) -> Iterator[dict]:
    """Run the harness (PDS data in ``work/data``; ``env`` may choose the blobstore with
    the PDS's own PDS_BLOBSTORE_* variables) uploading ``files``; yields its JSON line."""
    folder = npm_package("pds")
    log = work / "harness.log"
    proc = Process(["node", str(folder / "harness.js"), str(work / "data"), *map(str, files)],
                   env=env, log=log, cwd=folder)
    try:
        yield read_harness_line(proc, log)
    finally:
        proc.stop()


def take_down_blob(pds_url: str, password: str, did: str, cid: str, applied: bool = True) -> None:
    """The admin API's blob takedown (or its reversal): the PDS moves the blob to (or out
    of) its quarantine."""
    res = httpx.post(
        f"{pds_url}/xrpc/com.atproto.admin.updateSubjectStatus", auth=(ADMIN, password),
        json={"subject": {"$type": "com.atproto.admin.defs#repoBlobRef", "did": did, "cid": cid},
              "takedown": {"applied": applied, "ref": "test"}}, timeout=30)
    assert res.status_code == 200, res.text
