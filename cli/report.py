"""``atcdn report``: what the traffic the nodes served cost here, and what it would have
cost from AWS — the hybrid egress model made visible.

Traffic comes from the nodes' own counters (``--node URL``, since each node started) or
from a Prometheus that scrapes them (``--prometheus URL --period 30d``). Prices come from a
dated table (``cli/prices.toml``, or ``--prices FILE``); the report names the table it used.
"""

from __future__ import annotations

import json
import math
import re
import time
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import httpx
from atcdn.cli.scrape import scrape_all
from atcdn.core.status import human_bytes

GB = 2**30
TB = 2**40
MONTH = 30 * 86400.0


@dataclass(frozen=True)
class Offer:
    """One way of serving the traffic from AWS: tiered egress and per-request prices."""

    name: str
    egress_tiers: tuple[tuple[float, float], ...]  # (up to TB in the month, $ per GB)
    per_10k_requests: float
    free_tb_per_month: float
    free_requests_per_month: float


@dataclass(frozen=True)
class Deployment:
    name: str
    included_tb_per_node: float
    per_tb_over: float
    monthly_per_node: float


@dataclass(frozen=True)
class Prices:
    as_of: str
    source: str
    path: str
    offers: tuple[Offer, ...]
    deployment: Deployment

    @classmethod
    def load(cls, path: Path | None = None) -> Prices:
        if path is None:
            text = resources.files("atcdn.cli").joinpath("prices.toml").read_text()
            where = "built-in table (atcdn/cli/prices.toml)"
        else:
            text, where = Path(path).read_text(), str(path)
        raw = tomllib.loads(text)
        offers = tuple(
            Offer(name=raw[key]["name"],
                  egress_tiers=tuple((float(a), float(b)) for a, b in raw[key]["egress_tiers"]),
                  per_10k_requests=float(raw[key]["per_10k_requests"]),
                  free_tb_per_month=float(raw[key].get("free_tb_per_month", 0.0)),
                  free_requests_per_month=float(raw[key].get("free_requests_per_month", 0.0)))
            for key in ("cloudfront", "s3"))
        return cls(as_of=raw["as_of"], source=raw["source"], path=where, offers=offers,
                   deployment=Deployment(**{k: (v if k == "name" else float(v))
                                            for k, v in raw["deployment"].items()}))


@dataclass(frozen=True)
class Usage:
    """Traffic over a period: bytes sent to clients (edges), bytes between our own nodes
    (origin to edges), client requests, and how many nodes served it."""

    seconds: float
    client_bytes: float
    internal_bytes: float
    requests: float
    nodes: int


@dataclass(frozen=True)
class Line:
    name: str
    traffic: float  # $ for the period
    fixed: float  # $ for the period whatever is served


def tiered(gb: float, tiers: tuple[tuple[float, float], ...]) -> float:
    """Dollars for ``gb`` in one month under cumulative tiers (pure)."""
    cost, floor_gb = 0.0, 0.0
    for upto_tb, per_gb in tiers:
        ceiling_gb = upto_tb * TB / GB if math.isfinite(upto_tb) else math.inf
        if gb <= floor_gb:
            break
        cost += (min(gb, ceiling_gb) - floor_gb) * per_gb
        floor_gb = ceiling_gb
    return cost


def aws_cost(usage: Usage, offer: Offer) -> Line:
    """The period's client traffic priced as ``offer`` (pure)."""
    months = usage.seconds / MONTH
    if months <= 0:
        return Line(offer.name, 0.0, 0.0)
    monthly_gb = usage.client_bytes / GB / months
    billable_gb = max(0.0, monthly_gb - offer.free_tb_per_month * TB / GB)
    monthly_requests = max(0.0, usage.requests / months - offer.free_requests_per_month)
    per_month = tiered(billable_gb, offer.egress_tiers) + monthly_requests / 1e4 * offer.per_10k_requests
    return Line(offer.name, per_month * months, 0.0)


def deployment_cost(usage: Usage, deployment: Deployment) -> Line:
    """This deployment: traffic beyond what the nodes include, plus the nodes (pure)."""
    months = usage.seconds / MONTH
    included = usage.nodes * deployment.included_tb_per_node * TB * months
    over_tb = max(0.0, usage.client_bytes + usage.internal_bytes - included) / TB
    return Line(deployment.name, over_tb * deployment.per_tb_over,
                usage.nodes * deployment.monthly_per_node * months)


def parse_period(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` or seconds -> seconds (pure)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"not a period: {text!r} (e.g. 30d, 12h, 90m)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return float(match.group(1)) * unit


def usage_from_nodes(urls: list[str], seconds: float | None) -> Usage:
    """Counters of running nodes since they started (their start time is exported)."""
    nodes = scrape_all(urls)
    dead = [n.url for n in nodes if not n.samples]
    if dead:
        raise RuntimeError(f"no metrics from {', '.join(dead)}")
    edges = [n for n in nodes if n.kind == "edge"]
    origins = [n for n in nodes if n.kind == "origin"]
    client = sum(n.total("atcdn_edge_bytes_served_total") for n in edges)
    internal = sum(n.total("atcdn_origin_bytes_out_total") for n in origins)
    requests = sum(n.total("atcdn_edge_cache_hits_total") + n.total("atcdn_edge_cache_misses_total")
                   for n in edges)
    if seconds is None:
        starts = [n.total("atcdn_node_start_time_seconds") for n in nodes]
        known = [s for s in starts if s > 0]
        if not known:
            raise RuntimeError("the nodes export no start time: give --period")
        seconds = max(1.0, time.time() - min(known))
    return Usage(seconds, client, internal, requests, len(nodes))


def usage_from_prometheus(url: str, seconds: float) -> Usage:
    window = f"{int(seconds)}s"

    def query(expr: str) -> float:
        response = httpx.get(url.rstrip("/") + "/api/v1/query", params={"query": expr},
                             timeout=30, trust_env=False)
        response.raise_for_status()
        result = response.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    client = query(f"sum(increase(atcdn_edge_bytes_served_total[{window}]))")
    internal = query(f"sum(increase(atcdn_origin_bytes_out_total[{window}]))")
    requests = query(f"sum(increase(atcdn_edge_cache_hits_total[{window}]))"
                     f" + sum(increase(atcdn_edge_cache_misses_total[{window}]))")
    nodes = int(query('count(up{job=~"atcdn.*"})'))
    return Usage(seconds, client, internal, requests, max(nodes, 1))


def report(usage: Usage, prices: Prices) -> dict:
    """Everything the command prints, as data (pure)."""
    here = deployment_cost(usage, prices.deployment)
    aws = [aws_cost(usage, offer) for offer in prices.offers]
    return {"period_days": usage.seconds / 86400, "usage": asdict(usage),
            "prices": {"as_of": prices.as_of, "from": prices.path, "source": prices.source},
            "here": asdict(here), "aws": [asdict(line) for line in aws],
            "saved_vs_cheapest_aws": min(line.traffic for line in aws) - here.traffic}


def render(data: dict) -> str:
    """The report as text for a terminal (pure)."""
    usage = data["usage"]
    lines = [
        f"Traffic over {data['period_days']:.2f} days on {usage['nodes']} node(s): "
        f"{human_bytes(usage['client_bytes'])} to clients, "
        f"{human_bytes(usage['internal_bytes'])} origin to edges, "
        f"{usage['requests']:,.0f} client requests.",
        "",
        f"{'served by':<58} {'traffic $':>12} {'servers $':>12}",
        f"{data['here']['name']:<58} {data['here']['traffic']:>12,.2f} {data['here']['fixed']:>12,.2f}",
    ]
    lines += [f"{line['name']:<58} {line['traffic']:>12,.2f} {'':>12}" for line in data["aws"]]
    lines += ["", f"Traffic saved against the cheapest AWS option: "
                  f"${data['saved_vs_cheapest_aws']:,.2f}",
              f"Prices as of {data['prices']['as_of']} from {data['prices']['from']}"
              f" ({data['prices']['source']})"]
    return "\n".join(lines)


def run(nodes: list[str], prometheus: str | None, period: str | None,
        prices_file: Path | None, as_json: bool) -> str:
    seconds = parse_period(period) if period else None
    prices = Prices.load(prices_file)
    if prometheus:
        if seconds is None:
            raise RuntimeError("--prometheus needs --period")
        usage = usage_from_prometheus(prometheus, seconds)
    else:
        usage = usage_from_nodes(nodes, seconds)
    data = report(usage, prices)
    return json.dumps(data, indent=2) if as_json else render(data)
