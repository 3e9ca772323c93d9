"""Applying the Ansible playbooks to this machine: the CLI, a certificate the test trusts,
the PLAY RECAP, and stopping what the roles started (by the PIDs in their pid files)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.helpers.env import ROOT, need, need_tool

ANSIBLE = ROOT / "ansible"


def tool(name: str) -> str:
    """An Ansible CLI next to this interpreter (pip's scripts dir), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else need_tool(name)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run(argv, cwd=ANSIBLE, env=env, capture_output=True, text=True, **kwargs)


def apply_workspace(name: str, tools: tuple[str, ...]) -> tuple[str, Path, Path]:
    """What an apply to this machine needs: root, ``tools``, Debian's python3; then
    ansible-playbook, a throwaway prefix and its private ``test`` directory. The prefix
    is not under pytest's 0700 tmp root: the throwaway users must reach their dirs."""
    need(os.geteuid() == 0, "the apply test creates system users: run as root")
    for tool_name in ("start-stop-daemon", "useradd", *tools):
        need_tool(tool_name)
    need(Path("/usr/bin/python3").exists(), "/usr/bin/python3 (Debian python3-venv) missing")
    playbook = tool("ansible-playbook")
    prefix = Path(tempfile.mkdtemp(prefix=f"atcdn-{name}-", dir="/tmp"))
    prefix.chmod(0o755)
    work = prefix / "test"
    work.mkdir()
    work.chmod(0o700)
    return playbook, prefix, work


def make_certificate(directory: Path, addresses: tuple[str, ...] = ("127.0.0.1",),
                     name: str = "edge") -> tuple[Path, Path]:
    """A self-signed certificate for ``addresses`` (the test trusts exactly this one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"atcdn test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def recap_changed(output: str) -> int:
    """changed=N summed over the PLAY RECAP lines."""
    return sum(int(n) for n in re.findall(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M))


def changed_tasks(output: str) -> list[str]:
    """The TASK headers followed by a ``changed:`` line (for failure messages)."""
    blocks = re.split(r"^(?=TASK \[|RUNNING HANDLER \[)", output, flags=re.M)
    return [b.splitlines()[0] for b in blocks if re.search(r"^changed:", b, re.M)]


def stop_pid_file(path: Path) -> None:
    """SIGTERM the PID in ``path`` (uvicorn, granian, nginx and haproxy masters stop their
    workers), wait, then SIGKILL whatever is left of its process group."""
    stop_pid_files([path])


def stop_pid_files(paths: list[Path], grace: float = 15) -> None:
    """Stop the processes named in ``paths`` at once: SIGTERM to each, up to ``grace``
    seconds for all of them together, then SIGKILL what is left of their groups."""
    groups: dict[int, int] = {}
    for path in paths:
        if not path.exists():
            continue
        pid = int(path.read_text().strip())
        try:
            groups[pid] = os.getpgid(pid)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        for pid in list(groups):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                groups.pop(pid)
        time.sleep(0.1)
    for group in groups.values():
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


def trust(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def wait_ok(url: str, timeout: float = 60, **kwargs) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2, **kwargs).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.2)
