"""The Ansible fleet playbook, for real: a store, two origins, two edges and a PoP
load balancer provisioned on this machine in one run of fleet.yml, each node on its own
loopback address (127.0.0.x) with its own prefix, system user and ports.

As in test_ansible.py, the host-changing parts are off (apt, sysctl, nftables) and the
services are started by start-stop-daemon with pid files (systemd is not PID 1 here),
which is how the test stops them. It PUTs a JPEG to one origin, reads it through the
other (one SeaweedFS store behind both), fetches a resized copy through HAProxy over TLS
(a certificate the test made, verified) and from every edge through it, then re-applies
expecting changed=0 and the same PIDs.
"""

from __future__ import annotations

import io
import json
import pwd
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from atcdn.core import cid as cids
from PIL import Image

from tests.helpers.ansible import (apply_workspace, changed_tasks, make_certificate,
                                   recap_changed, run, stop_pid_files, trust, wait_ok)
from tests.helpers.env import ROOT, need_tool
from tests.helpers.servers import free_port

# The fixture applies a six-node fleet: more than the default 300 s on a loaded machine.
pytestmark = pytest.mark.timeout(900)

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
TOKEN = "fleet-test-token-" + uuid.uuid4().hex
S3_KEY, S3_SECRET = "fleet-" + uuid.uuid4().hex[:8], "fleet-secret-" + uuid.uuid4().hex
# Each node on its own loopback address.
ADDRESSES = {"store1": "127.0.0.21", "origin1": "127.0.0.22", "origin2": "127.0.0.23",
             "edge1": "127.0.0.24", "edge2": "127.0.0.25", "lb1": "127.0.0.27"}
GROUPS = {"store": ["store1"], "origin": ["origin1", "origin2"], "edge": ["edge1", "edge2"],
          "lb": ["lb1"]}
# The directories a Debian host already has (the roles' parents).
FILESYSTEM = ("etc", "opt", "run", "usr/local/sbin", "var/cache", "var/lib", "var/log")
# The pid files each kind of node leaves (under its prefix), in stopping order.
PID_FILES = {
    "lb": ["run/atcdn-lb/atcdn-lb.pid"],
    "edge": ["run/atcdn/nginx.pid", "run/atcdn/atcdn-edge.pid"],
    "origin": ["run/atcdn/atcdn-origin.pid"],
    "store": [f"run/seaweedfs/seaweedfs-{c}.pid" for c in ("s3", "filer", "volume", "master")],
}


@dataclass
class Node:
    name: str
    group: str
    address: str
    prefix: Path
    user: str
    vars: dict[str, object]

    def pid(self, relative: str) -> int:
        return int((self.prefix / relative).read_text().strip())

    def pids(self) -> dict[str, int]:
        return {f: self.pid(f) for f in PID_FILES[self.group]}


@dataclass
class Fleet:
    nodes: dict[str, Node]
    cert: Path
    argv: list[str]
    first: subprocess.CompletedProcess[str]

    def url(self, name: str, port_var: str, scheme: str = "http") -> str:
        node = self.nodes[name]
        return f"{scheme}://{node.address}:{node.vars[port_var]}"


def checkout(prefix: Path) -> Path:
    """A node's own copy of the source (pip builds in the tree: hosts never share one)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    source = prefix / "src" / "atcdn"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for directory in config["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / directory, source / directory,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return source


def node_vars(name: str, group: str, address: str, prefix: Path, user: str,
              cert: Path, key: str, ports: dict[str, int]) -> dict[str, object]:
    base: dict[str, object] = {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "ansible_become": False, "atcdn_node_address": address,
        "atcdn_prefix": str(prefix), "atcdn_user": user, "atcdn_group": user,
        "atcdn_service_manager": "direct",
        "common_install_packages": False, "common_sysctl_apply": False,
        "common_firewall_apply": False, "common_firewall_ssh_from_anywhere": True,
        "origin_s3_access_key": S3_KEY, "origin_s3_secret_key": S3_SECRET,
    }
    if group in ("origin", "edge"):
        base["atcdn_package"] = str(checkout(prefix))
    if group == "store":
        base.update({
            "seaweedfs_user": user + "s", "seaweedfs_group": user + "s",
            "seaweedfs_volume_size_limit_mb": 64, "seaweedfs_volume_max": 8,
            "seaweedfs_s3_identities": [{"name": "atcdn-origin", "access_key": S3_KEY,
                                         "secret_key": S3_SECRET,
                                         "actions": ["Read", "Write", "List", "Admin"]}],
            **{f"seaweedfs_{c}_port": ports[c] for c in ("master", "volume", "filer", "s3")},
            **{f"seaweedfs_{c}_grpc_port": ports[c + "_grpc"]
               for c in ("master", "volume", "filer", "s3")},
        })
    elif group == "origin":
        base.update({"origin_host": address, "origin_port": ports["http"], "origin_workers": 1,
                     "origin_token": TOKEN})
    elif group == "edge":
        base.update({
            "edge_host": address, "edge_port": ports["http"], "edge_workers": 1,
            "edge_tls_port": ports["tls"], "edge_http_port": 0, "edge_listen_address": address,
            "edge_tls_certificate_src": str(cert), "edge_tls_key_src": key,
            "edge_nginx_disable_distro_service": False, "edge_pds_fallback": False,
            "edge_allow_private_networks": True, "edge_token": TOKEN,
            "edge_origin_token": TOKEN, "edge_nginx_user": user + "w",
        })
    else:
        base.update({
            "haproxy_user": user + "l", "haproxy_group": user + "l",
            "haproxy_disable_distro_service": False, "haproxy_listen_address": address,
            "haproxy_tls_port": ports["tls"], "haproxy_http_port": 0,
            "haproxy_tls_certificate_src": str(cert), "haproxy_tls_key_src": key,
            "haproxy_edge_ca_src": str(cert), "haproxy_check_interval": "500ms",
            # Direct mode cannot lift the open-files limit (systemd: LimitNOFILE).
            "haproxy_maxconn": 4000,
        })
    return base


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    playbook, base, work = apply_workspace("fleetops", ("nginx", "haproxy"))
    cert, key = make_certificate(work, tuple(ADDRESSES.values()), "fleet")
    tag = uuid.uuid4().hex[:6]
    nodes: dict[str, Node] = {}
    for group, names in GROUPS.items():
        for name in names:
            prefix = base / name
            for directory in FILESYSTEM:  # as on a real host, root's and world-readable
                (prefix / directory).mkdir(mode=0o755, parents=True)
            prefix.chmod(0o755)
            user = f"atf{tag}{name[0]}{name[-1]}"
            ports = {p: free_port() for p in ("http", "tls", "master", "master_grpc", "volume",
                                              "volume_grpc", "filer", "filer_grpc", "s3",
                                              "s3_grpc")}
            nodes[name] = Node(name, group, ADDRESSES[name], prefix, user,
                               node_vars(name, group, ADDRESSES[name], prefix, user, cert,
                                         str(key), ports))
    inventory = work / "inventory.json"
    inventory.write_text(json.dumps({"all": {"children": {
        group: {"hosts": {n: nodes[n].vars for n in names}} for group, names in GROUPS.items()
    }}}))
    argv = [playbook, "-i", str(inventory), "fleet.yml", "--forks", "8"]
    try:
        first = run(argv, timeout=900)
        assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-3000:]
        yield Fleet(nodes, cert, argv, first)
    finally:
        stop_pid_files([node.prefix / relative for node in nodes.values()
                        for relative in PID_FILES[node.group]], grace=10)
        for node in nodes.values():
            for suffix in ("", "w", "s", "l"):
                subprocess.run(["userdel", node.user + suffix], capture_output=True)
                subprocess.run(["groupdel", node.user + suffix], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def jpeg() -> bytes:
    photo = io.BytesIO()
    Image.new("RGB", (1200, 800), (40, 120, 200)).save(photo, "JPEG", quality=90)
    return photo.getvalue()


def test_an_image_put_to_one_origin_is_served_resized_through_the_pop(fleet: Fleet) -> None:
    origin1, origin2 = fleet.url("origin1", "origin_port"), fleet.url("origin2", "origin_port")
    lb = fleet.url("lb1", "haproxy_tls_port", "https")
    for url in (origin1, origin2):
        wait_ok(url + "/health")
    data = jpeg()
    cid = cids.compute(data)
    put = httpx.put(f"{origin1}/blob/{cid}", params={"did": DID}, content=data,
                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert put.status_code in (200, 201), put.text
    # The other origin has it: one SeaweedFS store behind both.
    other = httpx.get(f"{origin2}/blob/{cid}", params={"did": DID}, timeout=30)
    assert other.status_code == 200 and other.content == data

    wait_ok(lb + "/health/live", verify=trust(fleet.cert))
    r = httpx.get(f"{lb}/img/feed_fullsize/plain/{DID}/{cid}@jpeg", verify=trust(fleet.cert),
                  timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG" and max(image.size) <= 1000
    # Consistent hashing on the CID: every rendition of the blob goes to the same edge.
    edges = {httpx.get(f"{lb}/img/{preset}/plain/{DID}/{cid}@jpeg", verify=trust(fleet.cert),
                       timeout=60).headers["x-atcdn-edge"]
             for preset in ("feed_thumbnail", "avatar", "feed_fullsize")}
    assert len(edges) == 1 and edges <= set(GROUPS["edge"]), edges
    # Every edge serves it, over TLS to its own address.
    for name in GROUPS["edge"]:
        direct = httpx.get(f"{fleet.url(name, 'edge_tls_port', 'https')}/img/avatar/plain/"
                           f"{DID}/{cid}@jpeg", verify=trust(fleet.cert), timeout=60)
        assert direct.status_code == 200, (name, direct.text)
    # Clients must trust the PoP's certificate: an untrusting client fails.
    with pytest.raises(httpx.ConnectError):
        httpx.get(lb + "/health/live", timeout=5)


def test_every_service_runs_as_its_own_user_with_a_hardened_unit(fleet: Fleet) -> None:
    store = fleet.nodes["store1"]
    for node in fleet.nodes.values():
        expected = {"store": node.user + "s", "origin": node.user, "lb": node.user + "l"}
        for relative in PID_FILES[node.group]:
            if relative.endswith("nginx.pid"):
                continue  # nginx's master is root; its workers are checked by test_ansible.py
            uid = pwd.getpwnam(expected.get(node.group, node.user)).pw_uid
            status = Path(f"/proc/{node.pid(relative)}/status").read_text()
            assert re.search(rf"^Uid:\s+{uid}\b", status, re.M), (node.name, relative)
    units = store.prefix / "etc/systemd/system"
    for component in ("master", "volume", "filer", "s3"):
        unit = (units / f"seaweedfs-{component}.service").read_text()
        for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                     f"User={store.user}s", "MemoryMax=", "TasksMax=", "IPAddressDeny=any",
                     f"IPAddressAllow=localhost {store.address}", "CapabilityBoundingSet=\n",
                     "ReadWritePaths="):
            assert line in unit, (component, line)
        assert "-telemetry=false" in unit or component != "master"
    s3_unit = (units / "seaweedfs-s3.service").read_text()
    assert all(fleet.nodes[o].address in s3_unit for o in GROUPS["origin"])
    s3_config = store.prefix / "etc/seaweedfs/s3.json"
    assert s3_config.stat().st_mode & 0o777 == 0o640 and S3_SECRET in s3_config.read_text()
    lb = fleet.nodes["lb1"]
    unit = (lb.prefix / "etc/systemd/system/atcdn-lb.service").read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", f"User={lb.user}l",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "MemoryMax=", "TasksMax="):
        assert line in unit, line
    pem = lb.prefix / "etc/atcdn-lb/pop.pem"
    assert pem.stat().st_mode & 0o777 == 0o640 and "PRIVATE KEY" in pem.read_text()
    # The store's firewall opens its ports to the store hosts and S3 to the origins only.
    ruleset = (store.prefix / "etc/nftables.conf").read_text()
    origins = ", ".join(fleet.nodes[o].address for o in GROUPS["origin"])
    assert f"ip saddr {{ {origins} }} tcp dport {{ {store.vars['seaweedfs_s3_port']} }}" in ruleset
    # An origin's port is open to the edges only.
    ruleset = (fleet.nodes["origin1"].prefix / "etc/nftables.conf").read_text()
    edges = ", ".join(fleet.nodes[e].address for e in GROUPS["edge"])
    assert f"ip saddr {{ {edges} }} tcp dport {{ {fleet.nodes['origin1'].vars['origin_port']} }}" \
        in ruleset


def test_units_pass_systemd_analyze_verify(fleet: Fleet) -> None:
    analyze = need_tool("systemd-analyze")
    units = [fleet.nodes["store1"].prefix / f"etc/systemd/system/seaweedfs-{c}.service"
             for c in ("master", "volume", "filer", "s3")]
    units.append(fleet.nodes["lb1"].prefix / "etc/systemd/system/atcdn-lb.service")
    for unit in units:
        done = subprocess.run([analyze, "verify", "--man=no", str(unit)], cwd=unit.parent,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and not done.stderr.strip(), (unit.name, done.stderr)


def test_second_apply_changes_nothing(fleet: Fleet) -> None:
    pids = {name: node.pids() for name, node in fleet.nodes.items()}
    assert recap_changed(fleet.first.stdout) > 0
    second = run(fleet.argv, timeout=900)
    assert second.returncode == 0, second.stdout[-8000:]
    assert recap_changed(second.stdout) == 0, "\n".join(changed_tasks(second.stdout))
    assert {name: node.pids() for name, node in fleet.nodes.items()} == pids
    wait_ok(fleet.url("lb1", "haproxy_tls_port", "https") + "/health/live",
            verify=trust(fleet.cert))
