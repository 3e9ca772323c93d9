"""Reading running nodes: their /metrics (Prometheus text) and /health, over HTTP."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from atcdn.core.status import Sample, by_label, parse_metrics, total


@dataclass
class Node:
    """What one node's /metrics and /health said: samples by name, summed over labels
    unless asked for by label."""

    url: str
    healthy: bool
    health: dict = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def kind(self) -> str:
        if any(name.startswith("atcdn_edge_") for name, _, _ in self.samples):
            return "edge"
        if any(name.startswith("atcdn_origin_") for name, _, _ in self.samples):
            return "origin"
        return "unknown"

    def total(self, name: str, **labels: str) -> float:
        return total(self.samples, name, **labels)

    def by(self, name: str, label: str) -> dict[str, float]:
        return by_label(self.samples, name, label)


def scrape(url: str, timeout: float = 5.0) -> Node:
    """One node's state; an unreachable node is reported, never raised."""
    base = url.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            health = client.get(base + "/health")
            metrics = client.get(base + "/metrics")
    except httpx.HTTPError as exc:
        return Node(base, healthy=False, error=f"unreachable: {exc!r}")
    try:
        body = health.json()
    except ValueError:
        body = {}
    node = Node(base, healthy=health.status_code == 200, health=body if isinstance(body, dict) else {})
    if health.status_code != 200:
        node.error = f"/health answered {health.status_code}"
    if metrics.status_code == 200:
        node.samples = parse_metrics(metrics.text)
    else:
        node.error = node.error or f"/metrics answered {metrics.status_code}"
    return node


def scrape_all(urls: Iterable[str]) -> list[Node]:
    return [scrape(url) for url in urls]
