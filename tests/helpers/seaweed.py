"""A real SeaweedFS on free 127.0.0.1 ports, for S3-backed tests, in two shapes:

- ``run_seaweed``: one ``weed server -s3`` process (master, volume, filer and S3 in one);
- ``run_seaweed_cluster``: a cluster as a fleet runs it, each part its own process with
  its own directory: one ``weed master`` (every blob written twice: replication ``001``),
  three ``weed volume`` servers, a ``weed filer`` and the ``weed s3`` gateway. A test can
  kill -9 a volume server (``Cluster.volumes[i].kill()``) and start it again.

Without an S3 identity configuration SeaweedFS accepts any request, so the tests sign
with throwaway keys. ``weed`` does not always exit on SIGTERM; ``Process.stop`` falls
back to SIGKILL of its process group.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.servers import Process, free_port

ACCESS_KEY = "atcdn-test"
SECRET_KEY = "atcdn-test-secret"


@dataclass(frozen=True)
class Seaweed:
    endpoint: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def origin_env(self, bucket: str, prefix: str = "blobs/") -> dict[str, str]:
        """The ATCDN_ORIGIN_* variables for an origin storing in ``bucket`` here."""
        return {"ATCDN_ORIGIN_STORE": "s3", "ATCDN_ORIGIN_S3_ENDPOINT": self.endpoint,
                "ATCDN_ORIGIN_S3_BUCKET": bucket, "ATCDN_ORIGIN_S3_PREFIX": prefix,
                "ATCDN_ORIGIN_S3_ACCESS_KEY": self.access_key,
                "ATCDN_ORIGIN_S3_SECRET_KEY": self.secret_key}


def _ports(count: int) -> list[int]:
    """Distinct free ports (weed also opens port+10000 gRPC ports unless told; we tell)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _extra_s3_listeners_off(weed: str, command: str, prefix: str) -> list[str]:
    """Newer weed (4.x) also opens Iceberg (8181) and Lance (9101) catalog listeners on
    fixed ports, so two clusters on one machine collide: switch off the ones it has."""
    usage = subprocess.run([weed, command, "-h"], capture_output=True, text=True,
                           check=False).stderr
    return [f"-{prefix}{flag}=0" for flag in ("port.iceberg", "port.lance")
            if f"-{prefix}{flag} " in usage]


def run_seaweed(weed: str, workdir: Path, timeout: float = 60.0) -> Iterator[Seaweed]:
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc,
     metrics) = _ports(9)
    argv = [
        weed, "server", "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
        "-dir", str(workdir / "data"),
        "-master.port", str(master), "-master.port.grpc", str(master_grpc),
        "-master.volumeSizeLimitMB", "256", "-volume.max", "0",
        "-volume.port", str(volume), "-volume.port.grpc", str(volume_grpc),
        "-filer", "-filer.port", str(filer), "-filer.port.grpc", str(filer_grpc),
        "-s3", "-s3.port", str(s3), "-s3.port.grpc", str(s3_grpc),
        "-metricsPort", str(metrics), "-iam=false",
        *_extra_s3_listeners_off(weed, "server", "s3."),
    ]
    proc = Process(argv, log=workdir / "weed.log", cwd=workdir)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        _wait_ready(proc, endpoint, timeout)
        yield Seaweed(endpoint)
    finally:
        proc.stop(signal.SIGTERM, timeout=2.0)


def _wait_ready(proc: Process, endpoint: str, timeout: float) -> None:
    """Ready means a bucket can be created and an object written and read back."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                          config=Config(s3={"addressing_style": "path"},
                                        retries={"max_attempts": 1}))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.popen.returncode}: {proc.tail()}")
        try:
            client.create_bucket(Bucket="ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            if client.get_object(Bucket="ready-probe", Key="probe")["Body"].read() == b"ok":
                return
        except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, 503, no volumes...
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"SeaweedFS not ready in {timeout}s ({last}): {proc.tail()}")


class Part:
    """One process of a cluster, which a test may kill and start again (same ports, same
    directory: a node that died and came back)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.port = port
        self.proc: Process | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = Process(self.argv, log=self.workdir / f"{self.name}.log", cwd=self.workdir)

    def kill(self) -> None:
        """kill -9, as a machine dying would."""
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL, timeout=5.0)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=2.0)
            self.proc = None

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc is None or self.proc.popen.poll() is not None:
                raise RuntimeError(f"weed {self.name} exited: "
                                   f"{self.proc.tail() if self.proc else ''}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed {self.name} not listening on {self.port}")
            time.sleep(0.1)


@dataclass(frozen=True)
class Cluster(Seaweed):
    master: Part | None = None
    volumes: tuple[Part, ...] = ()
    filer: Part | None = None
    s3: Part | None = None

    @property
    def master_url(self) -> str:
        return f"http://127.0.0.1:{self.master.port}"  # type: ignore[union-attr]

    def parts(self) -> list[Part]:
        return [p for p in (self.master, *self.volumes, self.filer, self.s3) if p is not None]

    def volume_servers(self) -> int:
        """How many volume servers the master counts as alive."""
        import httpx

        topology = httpx.get(self.master_url + "/dir/status", timeout=5.0).json()["Topology"]
        return sum(len(rack.get("DataNodes") or []) for dc in topology["DataCenters"] or []
                   for rack in dc.get("Racks") or [])

    def wait_volume_servers(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.volume_servers() != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"master does not see {count} volume servers")
            time.sleep(0.2)


def run_seaweed_cluster(weed: str, workdir: Path, *, replication: str = "001",
                        volumes: int = 3, timeout: float = 60.0) -> Iterator[Cluster]:
    """A SeaweedFS cluster whose every part is its own process (see the module doc)."""
    ip = ["-ip", "127.0.0.1", "-ip.bind", "127.0.0.1"]
    master, master_grpc = _ports(2)
    master_addr = f"127.0.0.1:{master}.{master_grpc}"
    parts = {"master": Part("master", [
        weed, "master", *ip, "-port", str(master), "-port.grpc", str(master_grpc),
        "-mdir", str(workdir / "master"), "-defaultReplication", replication,
        "-volumeSizeLimitMB", "64"], workdir / "master", master)}
    for n in range(volumes):
        port, grpc = _ports(2)
        parts[f"volume{n}"] = Part(f"volume{n}", [
            weed, "volume", *ip, "-port", str(port), "-port.grpc", str(grpc),
            "-dir", str(workdir / f"volume{n}"), "-max", "20", "-master", master_addr,
            "-preStopSeconds", "0"], workdir / f"volume{n}", port)
    filer, filer_grpc, s3, s3_grpc = _ports(4)
    parts["filer"] = Part("filer", [
        weed, "filer", *ip, "-port", str(filer), "-port.grpc", str(filer_grpc),
        "-master", master_addr, "-defaultStoreDir", str(workdir / "filer")],
        workdir / "filer", filer)
    parts["s3"] = Part("s3", [
        weed, "s3", "-ip.bind", "127.0.0.1", "-port", str(s3), "-port.grpc", str(s3_grpc),
        "-filer", f"127.0.0.1:{filer}.{filer_grpc}", "-iam=false",
        *_extra_s3_listeners_off(weed, "s3", "")], workdir / "s3", s3)
    cluster = Cluster(f"http://127.0.0.1:{s3}", master=parts["master"],
                      volumes=tuple(parts[f"volume{n}"] for n in range(volumes)),
                      filer=parts["filer"], s3=parts["s3"])
    try:
        for part in cluster.parts():
            part.start()
            if part is cluster.master:
                part.wait_listening(timeout)
        cluster.wait_volume_servers(volumes, timeout)
        _wait_ready(cluster.s3.proc, cluster.endpoint, timeout)  # type: ignore[union-attr]
        yield cluster
    finally:
        for part in reversed(cluster.parts()):
            part.stop()
