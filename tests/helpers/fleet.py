"""A fleet on this machine, every node a real process on 127.0.0.1 that a test can kill
with SIGKILL and start again on its address:

- a SeaweedFS cluster (tests/helpers/seaweed.py: master, three volume servers holding
  every blob twice, filer, S3 gateway);
- two origins over one bucket of it, pulling misses from the author's PDS themselves
  (``ATCDN_ORIGIN_PDS_PULL=1``), following one takedown feed (moto_server);
- three edges with no PDS access (``ATCDN_PDS_FALLBACK=0``), each given both origins (a
  CID's home origin is the same on every edge);
- HAProxy in front of the edges, configured by the Ansible role's template
  (tests/helpers/pop.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers.nodes import Edge, Origin, running_origins, start_edge
from tests.helpers.pop import running_haproxy
from tests.helpers.seaweed import Cluster, run_seaweed_cluster

EDGES = ("e1", "e2", "e3")


@dataclass
class Fleet:
    cluster: Cluster
    origins: list[Origin]
    edges: dict[str, Edge]
    pop: str = ""
    workdir: Path = Path()
    edge_env: dict[str, str] = field(default_factory=dict)

    @property
    def origin_urls(self) -> str:
        return ",".join(origin.url for origin in self.origins)

    def start_edge(self, name: str, port: int | None = None) -> Edge:
        """Start edge ``name`` (again, on ``port``: its address and its disk cache)."""
        log = self.workdir / f"{name}.log"
        edge = start_edge(self.origin_urls, self.workdir / name, log, env=self.edge_env,
                          port=port)
        self.edges[name] = edge
        return edge

    def restart_edge(self, name: str) -> Edge:
        return self.start_edge(name, int(self.edges[name].url.rsplit(":", 1)[1]))

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every origin and edge answers its health check, the master counts every volume
        server."""
        self.cluster.wait_volume_servers(len(self.cluster.volumes), timeout)
        urls = [o.url + "/health" for o in self.origins]
        urls += [e.url + "/health/live" for e in self.edges.values()]
        deadline = time.monotonic() + timeout
        for url in urls:
            while True:
                try:
                    if httpx.get(url, timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} is not healthy")
                time.sleep(0.2)


def seaweed_cluster(weed: str, workdir: Path) -> AbstractContextManager[Cluster]:
    """The fleet's store, to start first (it may boot while the PDS does)."""
    return contextmanager(run_seaweed_cluster)(weed, workdir / "cluster")


@contextmanager
def running_fleet(workdir: Path, cluster: Cluster, *, haproxy: str, plc_url: str,
                  feed_env: Mapping[str, str]) -> Iterator[Fleet]:
    """Start the fleet's origins, edges and HAProxy over ``cluster`` (see the module
    doc); ``feed_env`` names the takedown feed."""
    pulls = {"ATCDN_ORIGIN_PDS_PULL": "1", "ATCDN_PLC_URL": plc_url,
             "ATCDN_ALLOW_PRIVATE_NETWORKS": "1"}
    env = {**cluster.origin_env(f"atcdn-{uuid.uuid4().hex[:12]}"), **feed_env, **pulls}
    with running_origins(workdir, 2, env) as origins:
        fleet = Fleet(cluster, origins, {}, workdir=workdir,
                      edge_env={"ATCDN_PDS_FALLBACK": "0", "ATCDN_PLC_URL": plc_url,
                                **feed_env})
        try:
            for name in EDGES:
                fleet.start_edge(name)
            with running_haproxy(haproxy, {n: e.url for n, e in fleet.edges.items()},
                                 workdir) as pop:
                fleet.pop = pop
                yield fleet
        finally:
            for edge in fleet.edges.values():
                edge.proc.stop()
