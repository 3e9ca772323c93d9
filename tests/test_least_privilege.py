"""Processes that decode hostile files hold no secrets, and an edge's write token cannot
take anything down (issue 9, hole 6).

The attack was: a decoder exploit reads the origin token from its own
``/proc/<pid>/environ`` and lifts a takedown. Here the environments of the real
processes are read the same way.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import httpx
import pytest
from atcdn.core.cid import compute
from atcdn.core.environment import without_secrets
from atcdn.core.settings import EdgeSettings
from PIL import Image

from tests.helpers.env import ADMIN_TOKEN, TOKEN
from tests.helpers.nodes import running_origin

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
SECRETS = {
    "ATCDN_EDGE_ORIGIN_TOKEN": "secret-origin-write-token",
    "ATCDN_EDGE_PURGE_TOKEN": "secret-purge-token",
    "ATCDN_ORIGIN_ADMIN_TOKEN": "secret-admin-token",
    "ATCDN_ORIGIN_S3_SECRET_KEY": "secret-s3-key",
    "AWS_ACCESS_KEY_ID": "AKIASECRETSECRET",
    "AWS_SECRET_ACCESS_KEY": "secret-aws-key",
    "GITHUB_TOKEN": "secret-github-token",
    "DATABASE_PASSWORD": "secret-password",
}


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def cmdline_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def session_processes(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:  # field 6 of stat: session id
            pids.append(int(entry.name))
    return pids


def leaked(pid: int) -> list[str]:
    values = set(environ_of(pid).values())
    return [name for name, secret in SECRETS.items() if secret in values]


def test_without_secrets_is_pure() -> None:
    env = {**SECRETS, "PATH": "/usr/bin", "HOME": "/home/x", "LANG": "C.UTF-8",
           "PYTHONPATH": "/src", "ATCDN_EDGE_CACHE_DIR": "/var/cache", "TZ": "UTC"}
    assert without_secrets(env) == {"PATH": "/usr/bin", "HOME": "/home/x",
                                    "LANG": "C.UTF-8", "PYTHONPATH": "/src", "TZ": "UTC"}


def image_served(origin: str, edge_factory, env: dict[str, str] | None = None) -> list[int]:
    """Start an edge and have it render one image; the PIDs of its session (the server,
    the fork server and its workers)."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(out, "JPEG")
    data = out.getvalue()
    cid = compute(data)
    httpx.put(f"{origin}/blob/{cid}", content=data, params={"did": DID},
              headers={"authorization": f"Bearer {TOKEN}"}).raise_for_status()
    edge = edge_factory(origin, env=env)
    r = httpx.get(f"{edge.url}/img/avatar/plain/{DID}/{cid}@jpeg", timeout=30)
    assert r.status_code == 200
    return session_processes(edge.proc.pid)


async def transcoder_of(fifo: Path) -> int:
    """The PID of the transcoder child started on ``fifo``, once it runs."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = [p for p in session_processes(os.getsid(0))
                    if "atcdn.edge.video" in cmdline_of(p) and str(fifo) in cmdline_of(p)]
        if children:
            return children[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the transcoder did not start")


def test_image_workers_hold_no_secrets(origin: str, edge_factory) -> None:
    pids = image_served(origin, edge_factory, SECRETS)
    decoders = [p for p in pids if "multiprocessing.forkserver" in cmdline_of(p)]
    servers = [p for p in pids if p not in decoders and "multiprocessing" not in cmdline_of(p)]
    assert decoders, [cmdline_of(p) for p in pids]  # the fork server and its workers
    assert len(decoders) >= 2
    for pid in decoders:
        assert leaked(pid) == [], cmdline_of(pid)
    assert servers and all(leaked(p) for p in servers)  # the server itself holds them


def test_transcoder_holds_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child transcoder reads its source from a FIFO nobody writes: it blocks, alive,
    while its environment is read."""
    from atcdn.edge.gate import Purges
    from atcdn.edge.transcodes import Transcodes

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    fifo = tmp_path / "source.mp4"
    os.mkfifo(fifo)
    transcodes = Transcodes(EdgeSettings(cache_dir=tmp_path / "cache"), Purges(tmp_path / "purges"))
    cid = compute(b"a video")
    (transcodes.folder(cid)).mkdir(parents=True)

    async def run() -> list[str]:
        task = asyncio.create_task(transcodes._child(cid, fifo, Purges.clock()))
        try:
            return leaked(await transcoder_of(fifo))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert asyncio.run(run()) == []


def test_write_token_cannot_take_down(tmp_path: Path) -> None:
    write = {"Authorization": f"Bearer {TOKEN}"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with running_origin(tmp_path) as origin, httpx.Client(base_url=origin.url) as client:
        data = os.urandom(100)
        cid = compute(data)
        assert client.put(f"/blob/{cid}", content=data, headers=write).status_code == 201
        assert client.put(f"/blob/{cid}", content=data, headers=admin).status_code == 403
        for route in ("/admin/takedown", "/admin/restore"):
            r = client.post(route, json={"cid": cid}, headers=write)
            assert r.status_code == 403 and r.json()["error"] == "Forbidden", r.text
        assert client.post("/admin/takedown", json={"cid": cid}, headers=admin).status_code == 200
        assert client.get(f"/blob/{cid}").status_code == 451
        assert client.post("/admin/restore", json={"cid": cid}, headers=write).status_code == 403
        assert client.get(f"/blob/{cid}").status_code == 451
        assert client.post("/admin/restore", json={"cid": cid}, headers=admin).status_code == 200
        assert client.get(f"/blob/{cid}").content == data


def test_admin_routes_refuse_without_an_admin_token(tmp_path: Path) -> None:
    with running_origin(tmp_path, env={"ATCDN_ORIGIN_ADMIN_TOKEN": ""}) as origin:
        r = httpx.post(f"{origin.url}/admin/takedown", json={"cid": compute(b"x")},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403 and "ATCDN_ORIGIN_ADMIN_TOKEN" in r.json()["message"]


# -- decoders off the network, under their own user (core/sandbox.py) ---------------------

CONNECT = """
import ctypes, encodings.idna, os, socket, sys
port, netns, isolated = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if netns:  # enter the network namespace of that process (needs root)
    fd = os.open(netns, os.O_RDONLY)
    assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0, ctypes.get_errno()
if isolated:  # (socket is imported first: nobody may not read the Python files)
    from atcdn.core.sandbox import isolate
    isolate("nobody")
try:
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    print("connected")
except OSError as exc:
    print(f"refused {exc}")
"""


def connects(port: int, *, netns: str = "", isolated: bool = False) -> bool:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CONNECT, str(port), netns, str(int(isolated))],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.startswith("connected")


def isolation_or_skip() -> None:
    from atcdn.core.sandbox import probe

    missing = [m for m in probe("nobody") if "network" in m]  # not the user switch
    if missing:
        pytest.skip(f"this platform does not let decoders leave the network: {missing}")


@pytest.fixture
def listener():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def identity(pid: int) -> tuple[str, int]:
    """(network namespace, real uid) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return os.readlink(f"/proc/{pid}/ns/net"), uid


def test_isolated_process_cannot_connect_to_loopback(listener: int) -> None:
    isolation_or_skip()
    assert connects(listener)  # the port is there to reach
    assert not connects(listener, isolated=True)


def check_decoder(pid: int, port: int) -> None:
    """``pid`` is in its own network namespace (which reaches no 127.0.0.1 port) and, if
    we are root, runs as nobody."""
    import pwd

    from atcdn.core.sandbox import user_ids

    deadline = time.monotonic() + 20  # a worker isolates itself as it starts
    while (netns := identity(pid)[0]) == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline, f"{pid} kept the network"
        time.sleep(0.05)
    uid = identity(pid)[1]
    if os.geteuid() == 0:
        if user_ids("nobody") is not None:  # else nobody cannot read this checkout
            assert uid == pwd.getpwnam("nobody").pw_uid
        assert not connects(port, netns=f"/proc/{pid}/ns/net")


def test_image_workers_have_no_network(origin: str, edge_factory, listener: int) -> None:
    isolation_or_skip()
    pids = image_served(origin, edge_factory)
    forkservers = {p for p in pids if "multiprocessing.forkserver" in cmdline_of(p)}
    workers = [p for p in forkservers
               if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
               in forkservers]  # forked by the fork server
    assert workers, [cmdline_of(p) for p in pids]
    for pid in workers:
        check_decoder(pid, listener)
    server = next(p for p in pids if "edge" in cmdline_of(p) and p not in forkservers)
    assert identity(server)[0] == os.readlink("/proc/self/ns/net")  # the server keeps it


def test_transcoder_has_no_network(tmp_path: Path, listener: int) -> None:
    """The child opens its source (a FIFO), isolates itself, then waits for the bytes."""
    from atcdn.edge.gate import Purges
    from atcdn.edge.transcodes import Transcodes

    isolation_or_skip()
    fifo = tmp_path / "source.mp4"
    os.mkfifo(fifo)
    transcodes = Transcodes(EdgeSettings(cache_dir=tmp_path / "cache"), Purges(tmp_path / "purges"))
    cid = compute(b"another video")
    transcodes.folder(cid).mkdir(parents=True)

    async def run() -> None:
        task = asyncio.create_task(transcodes._child(cid, fifo, Purges.clock()))
        writer = None
        try:
            child = await transcoder_of(fifo)
            writer = await asyncio.to_thread(os.open, fifo, os.O_WRONLY)
            await asyncio.to_thread(check_decoder, child, listener)
        finally:
            if writer is not None:
                os.close(writer)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())


def test_decoder_user_who_cannot_reach_the_code_is_not_switched_to(tmp_path: Path) -> None:
    """A checkout under a private directory (0700, as a temp dir or a home is): switching
    the decoders to nobody would kill them at their next import, so they stay root."""
    from atcdn.core.sandbox import _searchable

    private = tmp_path / "private"
    (private / "code").mkdir(parents=True)
    private.chmod(0o700)
    open_dir = tmp_path / "open"
    (open_dir / "code").mkdir(parents=True)
    for path in (open_dir, open_dir / "code", *tmp_path.parents, tmp_path):
        if path == tmp_path or path in tmp_path.parents:
            continue
        path.chmod(0o755)
    nobody = 65534
    assert not _searchable(str(private / "code"), nobody, nobody)
    reachable = all(os.stat(p).st_mode & 0o1 for p in (tmp_path, *tmp_path.parents))
    assert _searchable(str(open_dir / "code"), nobody, nobody) == bool(reachable)
