"""A PoP: Debian's HAProxy in front of edges, configured by the Ansible role's own
template (ansible/roles/haproxy), so the tests run the configuration a fleet deploys."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jinja2

from tests.helpers.env import ROOT
from tests.helpers.servers import Process, free_port

TEMPLATE = ROOT / "ansible" / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2"


HASHED = "    balance hash var(txn.blob)\n    hash-type consistent\n"


def render_config(path: Path, port: int, edges: dict[str, str], *,
                  check_interval: str = "300ms", balance: str = "hash") -> None:
    """The role's haproxy.cfg for ``edges`` (name -> URL), listening on ``port``, checking
    every edge every ``check_interval``; ``balance`` "hash" keeps the role's consistent
    hashing, "roundrobin" swaps it for round-robin (to compare the two)."""
    template = jinja2.Template(TEMPLATE.read_text(), undefined=jinja2.StrictUndefined)
    text = template.render(
        haproxy_bind=f"127.0.0.1:{port}", haproxy_check_interval=check_interval,
        haproxy_maxconn=1000,
        haproxy_edges=[{"name": n, "address": u.split("://")[1]} for n, u in edges.items()])
    if balance == "roundrobin":
        if HASHED not in text:
            raise RuntimeError("the HAProxy template no longer balances by consistent hashing")
        text = text.replace(HASHED, "    balance roundrobin\n")
    path.write_text(text)


@contextmanager
def running_haproxy(haproxy: str, edges: dict[str, str], workdir: Path, *,
                    check_interval: str = "300ms", balance: str = "hash") -> Iterator[str]:
    """HAProxy (checked with ``-c``, then run in the foreground) in front of ``edges``;
    yields the PoP's URL."""
    port = free_port()
    config = workdir / "haproxy.cfg"
    render_config(config, port, edges, check_interval=check_interval, balance=balance)
    check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = Process([haproxy, "-W", "-db", "-f", str(config)], log=workdir / "haproxy.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
