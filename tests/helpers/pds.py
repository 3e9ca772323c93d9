"""The reference PDS and its PLC directory (tests/pds/harness.js) as real test peers, and an
XRPC client for what a user and a PDS admin do with it: accounts, uploads, posts, avatars,
takedowns."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class ReferencePDS:
    """A running harness: PLC and PDS URLs, the admin password and the harness's account."""

    def __init__(self, proc: Process, log: Path, info: dict[str, Any]) -> None:
        self.proc = proc
        self.log = log
        self.plc_url: str = info["plcUrl"]
        self.url: str = info["pdsUrl"]
        self.ws_url = self.url.replace("http://", "ws://")
        self.admin_password: str = info["adminPassword"]
        self.did: str = info["did"]
        self.handle: str = info["handle"]

    def get_blob_log(self) -> list[dict[str, Any]]:
        """Every getBlob the PDS answered in full, in order."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line)["getBlob"] for line in lines if line.startswith('{"getBlob"')]

    def admin(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        res = httpx.post(f"{self.url}/xrpc/{method}", auth=("admin", self.admin_password),
                         json=body, timeout=30)
        assert res.status_code == 200, res.text
        return res.json()

    def take_down_account(self, did: str, applied: bool = True) -> None:
        """An admin takedown (or its reversal): the PDS emits #account on its firehose."""
        self.admin("com.atproto.admin.updateSubjectStatus", {
            "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did},
            "takedown": {"applied": applied, "ref": "test"}})

    def create_account(self, handle: str) -> User:
        res = httpx.post(f"{self.url}/xrpc/com.atproto.server.createAccount", timeout=30,
                         json={"handle": handle, "email": f"{handle}@example.com",
                               "password": "password"})
        assert res.status_code == 200, res.text
        body = res.json()
        return User(self.url, body["did"], body["accessJwt"])

    def login(self, identifier: str, password: str) -> User:
        res = httpx.post(f"{self.url}/xrpc/com.atproto.server.createSession", timeout=30,
                         json={"identifier": identifier, "password": password})
        assert res.status_code == 200, res.text
        body = res.json()
        return User(self.url, body["did"], body["accessJwt"])


class User:
    """An account on the PDS, acting through its access token."""

    def __init__(self, pds_url: str, did: str, token: str) -> None:
        self.pds_url = pds_url
        self.did = did
        self.client = httpx.Client(base_url=f"{pds_url}/xrpc/", timeout=60,
                                   headers={"authorization": f"Bearer {token}"})

    def call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        res = self.client.post(method, **kwargs)
        assert res.status_code == 200, f"{method}: {res.status_code} {res.text}"
        return res.json()

    def upload(self, data: bytes, mime: str) -> dict[str, Any]:
        """uploadBlob: the blob ref (JSON form) to put in a record."""
        return self.call("com.atproto.repo.uploadBlob", content=data,
                         headers={"content-type": mime})["blob"]

    def create(self, collection: str, record: dict[str, Any],
               rkey: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"repo": self.did, "collection": collection,
                                "record": {"$type": collection, **record}}
        if rkey is None:
            return self.call("com.atproto.repo.createRecord", json=body)
        return self.call("com.atproto.repo.putRecord", json={**body, "rkey": rkey})

    def post_images(self, *images: bytes, mime: str = "image/jpeg") -> tuple[str, list[str]]:
        """A post with these images: (its at:// URI, the blob CIDs)."""
        refs = [self.upload(data, mime) for data in images]
        answer = self.create("app.bsky.feed.post", {
            "text": "pictures", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.images",
                      "images": [{"alt": "", "image": ref} for ref in refs]}})
        return answer["uri"], [ref["ref"]["$link"] for ref in refs]

    def post_video(self, data: bytes) -> tuple[str, str]:
        ref = self.upload(data, "video/mp4")
        answer = self.create("app.bsky.feed.post", {
            "text": "a video", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.video", "video": ref}})
        return answer["uri"], ref["ref"]["$link"]

    def set_avatar(self, data: bytes, mime: str = "image/png") -> str:
        ref = self.upload(data, mime)
        self.create("app.bsky.actor.profile", {"displayName": "tester", "avatar": ref},
                    rkey="self")
        return ref["ref"]["$link"]

    def delete(self, uri: str) -> None:
        collection, rkey = uri.split("/")[-2:]
        self.call("com.atproto.repo.deleteRecord",
                  json={"repo": self.did, "collection": collection, "rkey": rkey})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@contextmanager
def reference_pds(tmp: Path) -> Iterator[ReferencePDS]:
    """Start the harness (no initial uploads) with its data under ``tmp``."""
    folder = npm_package("pds")
    log = tmp / "harness.log"
    proc = Process(["node", str(folder / "harness.js"), str(tmp / "data")], log=log, cwd=folder)
    try:
        yield ReferencePDS(proc, log, read_harness_line(proc, log))
    finally:
        proc.stop()
