"""The Ansible roles, for real: lint, syntax, and an apply to this machine.

The apply uses a throwaway prefix (a temp dir) and a throwaway system user, with the
host-changing parts switched off (apt, loading sysctl and nftables). Where systemd is
not PID 1 (containers, CI) the roles start the services with start-stop-daemon and pid
files, which is how this test stops them again. It then stores a JPEG in the origin it
installed, fetches a resized copy through the installed edge over TLS (a certificate the
test made, verified against it), and re-applies expecting changed=0.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from atcdn.core import cid as cids
from PIL import Image

from tests.helpers.ansible import (apply_workspace, changed_tasks, make_certificate,
                                   recap_changed, run, stop_pid_file, tool, trust, wait_ok)
from tests.helpers.env import ROOT, need_tool
from tests.helpers.servers import Process, free_port

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
TOKEN = "ansible-test-token-" + uuid.uuid4().hex


def test_lint_production_profile() -> None:
    done = run([tool("ansible-lint"), "--profile", "production", "--nocolor", "."], timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("playbook", ["site.yml", "origin.yml", "edge.yml", "fleet.yml"])
def test_syntax_check(playbook: str) -> None:
    done = run([tool("ansible-playbook"), "--syntax-check", playbook], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class Install:
    prefix: Path
    user: str
    origin_url: str
    edge_url: str
    origin_port: int
    edge_port: int
    node_exporter_port: int
    cert: Path
    argv: list[str]
    first: subprocess.CompletedProcess[str]

    @property
    def run_dir(self) -> Path:
        return self.prefix / "run" / "atcdn"

    def pid(self, name: str) -> int:
        return int((self.run_dir / f"{name}.pid").read_text().strip())


@pytest.fixture(scope="module")
def install() -> Iterator[Install]:
    playbook, prefix, work = apply_workspace("ansible", ("nginx",))
    user = "atcdnt" + uuid.uuid4().hex[:8]
    cert, key = make_certificate(work)
    origin_port, edge_port, tls_port = free_port(), free_port(), free_port()
    node_exporter_port = free_port()
    inventory = work / "inventory.json"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "ansible_become": False}
    inventory.write_text(json.dumps({"all": {"children": {
        "origin": {"hosts": {"atcdn-test": host}},
        "edge": {"hosts": {"atcdn-test": host}},
        "prometheus": {"hosts": {"atcdn-test": host}}}}}))
    variables = {
        "atcdn_prefix": str(prefix), "atcdn_user": user, "atcdn_group": user,
        "atcdn_package": str(ROOT), "atcdn_service_manager": "direct",
        "atcdn_venv_system_site_packages": os.environ.get("ATCDN_TEST_VENV_SITE") == "1",
        "common_install_packages": False, "common_sysctl_apply": False,
        "common_firewall_apply": False,
        "origin_host": "127.0.0.1", "origin_port": origin_port, "origin_workers": 1,
        "origin_token": TOKEN,
        "edge_port": edge_port, "edge_workers": 1, "edge_tls_port": tls_port,
        "edge_http_port": 0, "edge_listen_address": "127.0.0.1",
        "edge_origin_url": f"http://127.0.0.1:{origin_port}",
        "edge_tls_certificate_src": str(cert), "edge_tls_key_src": str(key),
        "edge_nginx_disable_distro_service": False, "edge_pds_fallback": False,
        "edge_allow_private_networks": True, "edge_token": TOKEN, "edge_origin_token": TOKEN,
        "edge_nginx_user": user + "w", "common_firewall_ssh_from_anywhere": True,
        "monitoring_node_exporter_address": "127.0.0.1",
        "monitoring_node_exporter_port": node_exporter_port,
        "monitoring_prometheus_sources": ["10.9.8.7"], "monitoring_scrape_interval": "1s",
    }
    extra = work / "vars.json"
    extra.write_text(json.dumps(variables))
    argv = [playbook, "-i", str(inventory), "site.yml", "-e", f"@{extra}"]
    try:
        first = run(argv, timeout=900)
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        yield Install(prefix, user, f"http://127.0.0.1:{origin_port}",
                      f"https://127.0.0.1:{tls_port}", origin_port, edge_port,
                      node_exporter_port, cert, argv, first)
    finally:
        run_dir = prefix / "run" / "atcdn"
        for name in ("nginx", "atcdn-edge", "atcdn-origin"):
            stop_pid_file(run_dir / f"{name}.pid")
        for name in (user, user + "w"):
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)  # if userdel left it
        shutil.rmtree(prefix, ignore_errors=True)


def test_installed_edge_serves_an_image_over_tls(install: Install) -> None:
    wait_ok(install.origin_url + "/health")
    wait_ok(install.edge_url + "/health", verify=trust(install.cert))
    photo = io.BytesIO()
    Image.new("RGB", (1200, 800), (200, 120, 40)).save(photo, "JPEG", quality=90)
    data = photo.getvalue()
    cid = cids.compute(data)
    put = httpx.put(f"{install.origin_url}/blob/{cid}", params={"did": DID}, content=data,
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert put.status_code in (200, 201), put.text

    r = httpx.get(f"{install.edge_url}/img/feed_fullsize/plain/{DID}/{cid}@jpeg",
                  verify=trust(install.cert), timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG" and max(image.size) <= 1000
    # The authenticated purge API answers through nginx (from loopback, with the token).
    purge = httpx.post(f"{install.edge_url}/admin/purge", json={"paths": [f"/img/{DID}/{cid}"]},
                       headers={"Authorization": f"Bearer {TOKEN}"}, verify=trust(install.cert))
    assert purge.status_code == 200 and purge.json()["purged"] >= 1, purge.text
    # TLS really is verified against the test's certificate: an untrusting client fails.
    with pytest.raises(httpx.ConnectError):
        httpx.get(install.edge_url + "/health", timeout=5)


def test_services_run_as_the_system_user_with_a_hardened_unit(install: Install) -> None:
    import pwd

    uid = pwd.getpwnam(install.user).pw_uid
    for name in ("atcdn-origin", "atcdn-edge"):
        status = Path(f"/proc/{install.pid(name)}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\b", status, re.M), name
        unit = (install.prefix / f"etc/systemd/system/{name}.service").read_text()
        for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                     "Restart=on-failure", "LimitNOFILE=", f"User={install.user}",
                     "ReadWritePaths=", "MemoryMax=", "TasksMax=",
                     "IPAddressDeny=link-local multicast"):
            assert line in unit, (name, line)
    env = install.prefix / "etc/atcdn/origin.env"
    assert env.stat().st_mode & 0o777 == 0o640 and TOKEN in env.read_text()
    assert (install.prefix / "etc/atcdn/tls/edge.key").stat().st_mode & 0o777 == 0o600
    ruleset = (install.prefix / "etc/nftables.conf").read_text()
    assert "policy drop" in ruleset and "tcp dport { 22 }" in ruleset
    # Its own table, others' rules untouched; the services' user has restricted egress.
    assert not re.search(r"^\s*flush ruleset", ruleset, re.M)
    assert "delete table inet atcdn" in ruleset
    assert f'meta skuid "{install.user}" drop' in ruleset
    assert f'meta skuid "{install.user}" ip daddr 169.254.0.0/16 drop' in ruleset


def test_nginx_workers_cannot_read_the_edge_secrets(install: Install) -> None:
    import grp
    import pwd

    nginx_user = pwd.getpwnam(install.user + "w")
    service_group = grp.getgrnam(install.user)
    master = install.pid("nginx")
    workers = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    assert workers
    for pid in workers:
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{nginx_user.pw_uid}\b", status, re.M), status
    env = install.prefix / "etc/atcdn/edge.env"
    stat = env.stat()
    assert stat.st_mode & 0o007 == 0 and stat.st_gid == service_group.gr_gid
    assert nginx_user.pw_gid != service_group.gr_gid
    assert nginx_user.pw_name not in service_group.gr_mem
    # /metrics through nginx: only from edge_metrics_allow (loopback here).
    conf = (install.prefix / "etc/atcdn/nginx.conf").read_text()
    assert "location = /metrics" in conf
    sysctl = (install.prefix / "etc/sysctl.d/60-atcdn.conf").read_text()
    assert "net.core.somaxconn = 65535" in sysctl


def test_units_pass_systemd_analyze_verify(install: Install) -> None:
    analyze = need_tool("systemd-analyze")
    for name in ("atcdn-origin", "atcdn-edge", "atcdn-edge-tls"):
        unit = install.prefix / f"etc/systemd/system/{name}.service"
        done = subprocess.run([analyze, "verify", "--man=no", str(unit)], cwd=install.prefix,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not done.stderr.strip(), (name, done.stderr)


def test_scrape_targets_follow_the_inventory(install: Install) -> None:
    config = install.prefix / "etc/prometheus/atcdn"
    targets = {job: json.loads((config / "targets" / f"{job}.json").read_text())
               for job in ("atcdn-origin", "atcdn-edge", "node")}
    assert targets == {
        "atcdn-origin": [{"targets": [f"127.0.0.1:{install.origin_port}"]}],
        "atcdn-edge": [{"targets": [f"127.0.0.1:{install.edge_port}"]}],
        "node": [{"targets": [f"127.0.0.1:{install.node_exporter_port}"]}],
    }
    assert (config / "alerts.yml").read_bytes() == (ROOT / "ops/prometheus/alerts.yml").read_bytes()
    defaults = (install.prefix / "etc/default/prometheus-node-exporter").read_text()
    assert f'ARGS="--web.listen-address=127.0.0.1:{install.node_exporter_port}"' in defaults
    # Only the Prometheus sources reach the node exporter and the metrics ports.
    ruleset = (install.prefix / "etc/nftables.conf").read_text()
    ports = sorted({install.node_exporter_port, install.origin_port, install.edge_port})
    allowed = re.findall(r"ip saddr \{ 10\.9\.8\.7 \} tcp dport \{ ([\d, ]+) \}", ruleset)
    assert [sorted(int(p) for p in a.split(", ")) for a in allowed] == [ports], ruleset
    done = subprocess.run([need_tool("promtool"), "check", "config", str(config / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_scrapes_the_installed_nodes(install: Install) -> None:
    prometheus = need_tool("prometheus")
    wait_ok(install.origin_url + "/health")
    wait_ok(f"http://127.0.0.1:{install.edge_port}/health")
    port = free_port()
    work = install.prefix / "test"
    proc = Process([prometheus, f"--config.file={install.prefix}/etc/prometheus/atcdn/prometheus.yml",
                    f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                   log=work / "prometheus.log")
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)

        def up() -> set[str]:
            body = httpx.get(f"{api}/query", params={"query": "up == 1"}).json()
            return {r["metric"]["job"] for r in body["data"]["result"]}

        deadline = time.monotonic() + 30
        while not {"atcdn-origin", "atcdn-edge"} <= up() and time.monotonic() < deadline:
            time.sleep(0.5)
        targets = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
        assert {"atcdn-origin", "atcdn-edge"} <= up(), [
            (t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        assert {t["labels"]["job"] for t in targets} == {"atcdn-origin", "atcdn-edge", "node"}
        groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
        assert any(g["name"] == "atcdn" and g["rules"] for g in groups), groups
    finally:
        proc.stop()


def test_second_apply_changes_nothing(install: Install) -> None:
    pids = {name: install.pid(name) for name in ("atcdn-origin", "atcdn-edge", "nginx")}
    assert recap_changed(install.first.stdout) > 0
    second = run(install.argv, timeout=900)
    assert second.returncode == 0, second.stdout[-6000:]
    assert recap_changed(second.stdout) == 0, "\n".join(changed_tasks(second.stdout))
    assert {name: install.pid(name) for name in pids} == pids
    wait_ok(install.edge_url + "/health", verify=trust(install.cert))
