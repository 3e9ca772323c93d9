"""``atcdn up``: the whole CDN on localhost with embedded defaults, one command.

Each service is a child process (``python -m atcdn.cli <role> serve ...``) in its own
session; ``up`` waits for every one to answer ``/health``, prints how to use it, and stops
them all on Ctrl-C / SIGTERM, or as soon as one of them exits.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from atcdn.cli.banner import fallback_line
from atcdn.cli.flags import load
from atcdn.cli.serve import check_port
from atcdn.core.settings import EdgeSettings

HOST = "127.0.0.1"
SAMPLE_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"  # any valid DID; the origin has the blob


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self, log_dir: Path) -> None:
        with open(log_dir / f"{self.name}.log", "ab") as log:  # the child keeps its own fd
            self.popen = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the service's process group (its workers too), SIGKILL if it lingers."""
        if self.popen is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue


def load_token(path: Path) -> str:
    """The origin write token, generated on first use and kept (mode 0600) in ``path``."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def services(data_dir: Path, origin_port: int, edge_port: int, token: str) -> list[Service]:
    """The processes of a local CDN, in start order (the edge joins this list)."""
    cli = [sys.executable, "-m", "atcdn.cli"]
    origin = Service(
        "origin",
        [*cli, "origin", "serve", "--host", HOST, "--port", str(origin_port),
         "--data-dir", str(data_dir / "origin")],
        f"http://{HOST}:{origin_port}/health",
        env={"ATCDN_ORIGIN_TOKEN": token, "ATCDN_ORIGIN_STORE": "fs"},
    )
    edge = Service(
        "edge",
        [*cli, "edge", "serve", "--host", HOST, "--port", str(edge_port),
         "--origin", f"http://{HOST}:{origin_port}", "--cache-dir", str(data_dir / "edge")],
        f"http://{HOST}:{edge_port}/health",
        env={"ATCDN_EDGE_ORIGIN_TOKEN": token},
    )
    return [origin, edge]


def wait_healthy(service: Service, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited during start-up (see its log)")
        try:
            if httpx.get(service.health_url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{service.name} did not become healthy within {timeout}s")


def atcdn_command() -> str:
    """How to run this installation's ``atcdn`` (its script, else ``python -m``)."""
    script = Path(sysconfig.get_path("scripts")) / "atcdn"
    if script.exists():
        return str(script) if shutil.which("atcdn") != str(script) else "atcdn"
    return f"{sys.executable} -m atcdn.cli"


def usage(origin_url: str, token_file: Path) -> str:
    return f"""
atcdn is up.  Origin: {origin_url}   (write token in {token_file})

  TOKEN=$(cat {token_file})

  # store a file, letting the origin compute its CID. It answers 201 (200 if it was already
  # stored) with {{"cid", "size", "mimeType", "blob"}}, "blob" being the ref uploadBlob gives:
  # {{"$type": "blob", "ref": {{"$link": cid}}, "mimeType", "size"}}
  curl -s -X POST -H "Authorization: Bearer $TOKEN" --data-binary @photo.jpg {origin_url}/blob

  # store a file under the CID you computed, recording the DID that references it:
  CID=$({atcdn_command()} cid photo.jpg)
  curl -s -X PUT -H "Authorization: Bearer $TOKEN" --data-binary @photo.jpg "{origin_url}/blob/$CID?did={SAMPLE_DID}"

  # fetch it back (whole, a range, or as a PDS would serve it):
  curl -s -o copy.jpg {origin_url}/blob/$CID
  curl -s -H 'Range: bytes=0-99' {origin_url}/blob/$CID | wc -c
  curl -s -o copy2.jpg "{origin_url}/xrpc/com.atproto.sync.getBlob?did={SAMPLE_DID}&cid=$CID"
"""


def sample_image() -> bytes:
    """A 1600x1200 JPEG made here, so a fresh install has something to show."""
    import io

    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((500, 300, 1100, 900), fill=(32, 133, 255))
    draw.rectangle((80, 80, 380, 380), fill=(255, 200, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def store_sample(origin_url: str, token: str) -> str:
    """Store the sample image in the origin (idempotent: same bytes, same CID). This is
    also the proof that the server on the origin port is the one ``up`` started: only it
    knows the token."""
    answer = httpx.post(f"{origin_url}/blob", params={"did": SAMPLE_DID}, content=sample_image(),
                        headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
    if answer.status_code in (401, 403):
        raise RuntimeError(f"the server at {origin_url} refused up's write token: it is not "
                           "the origin atcdn up started (is another server on that port?)")
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"the server at {origin_url} answered HTTP {answer.status_code} "
                           "to a write: not an atcdn origin?")
    return answer.json()["cid"]


def edge_usage(edge_url: str, sample_cid: str, origin_url: str) -> str:
    did = SAMPLE_DID
    return f"""Edge: {edge_url}   (verifies, transforms and caches what the origin holds)

  # the sample image stored at start, through the edge (open it in a browser):
  {edge_url}/img/feed_thumbnail/plain/{did}/{sample_cid}@jpeg
  {edge_url}/img/avatar/plain/{did}/{sample_cid}@webp

  curl -s -o thumb.webp "{edge_url}/img/feed_thumbnail/plain/{did}/$CID@webp"
  curl -s -o avatar.jpg "{edge_url}/img/avatar/plain/{did}/$CID@jpeg"
  curl -s -o original "{edge_url}/blob/{did}/$CID"
  # a stored video (MP4, MOV, WebM, GIF) plays as HLS (hls.js, Safari, ExoPlayer):
  curl -s "{edge_url}/watch/{did}/$CID/playlist.m3u8"
  curl -s {edge_url}/metrics | grep atcdn_

See what the CDN is doing (docs/observability.md):
  {edge_url}/status   and   {origin_url}/status   (in a browser)
  {atcdn_command()} status {origin_url} {edge_url}
  {atcdn_command()} report --node {origin_url} --node {edge_url}

Ctrl-C stops everything.
"""


def up(data_dir: str | Path, origin_port: int, edge_port: int) -> None:
    data_dir = Path(data_dir).resolve()
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "origin-token"
    running: list[Service] = []

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    for port in (origin_port, edge_port):
        check_port(HOST, port)  # one line and exit, before anything starts
    token = load_token(token_file)
    origin_url = f"http://{HOST}:{origin_port}"
    fallback = fallback_line(load(EdgeSettings, "atcdn up"))
    try:
        for service in services(data_dir, origin_port, edge_port, token):
            service.start(log_dir)
            running.append(service)
            wait_healthy(service)
        sample_cid = store_sample(origin_url, token)
        print(usage(origin_url, token_file), flush=True)
        print(f"{fallback}\nLogs (one access line per request): {log_dir}/origin.log, "
              f"{log_dir}/edge.log\n", flush=True)
        print(edge_usage(f"http://{HOST}:{edge_port}", sample_cid, f"http://{HOST}:{origin_port}"),
              flush=True)
        while all(service.alive() for service in running):
            time.sleep(0.5)
        stopped = next(service.name for service in running if not service.alive())
        print(f"{stopped} exited; stopping the rest (logs in {log_dir})", file=sys.stderr)
        raise SystemExit(1)
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        print(f"atcdn up: {exc}; logs in {log_dir}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    finally:
        for service in reversed(running):
            service.stop()

