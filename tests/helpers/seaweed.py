"""A real SeaweedFS (``weed server -s3``) on free 127.0.0.1 ports, for S3-backed tests.

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


def _extra_listeners_off(weed: str) -> list[str]:
    """Newer weed (4.x) also opens Iceberg (8181) and Lance (9101) catalog listeners on
    fixed ports, so two clusters on one machine collide: switch off the ones it has."""
    usage = subprocess.run([weed, "server", "-h"], capture_output=True, text=True).stderr
    return [f"-{flag}=0" for flag in ("s3.port.iceberg", "s3.port.lance")
            if f"-{flag} " in usage]


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
        *_extra_listeners_off(weed),
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
