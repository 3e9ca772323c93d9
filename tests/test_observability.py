"""What operators see: the cost report, `atcdn status`, the alert rules (promtool and a real
Prometheus scraping running nodes) and the Grafana dashboard's queries."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from atcdn.cli.report import (
    GB,
    MONTH,
    TB,
    Deployment,
    Offer,
    Prices,
    Usage,
    aws_cost,
    deployment_cost,
    parse_period,
    report,
    tiered,
)
from atcdn.core.cid import compute
from atcdn.core.status import History, Point, page, public_config

from tests.helpers.env import ROOT, TOKEN, need_tool
from tests.helpers.nodes import running_origin, start_edge
from tests.helpers.pictures import DID, photo
from tests.helpers.servers import Process, atcdn, free_port

OPS = ROOT / "ops"


# -- the cost report (pure) --------------------------------------------------------------

TIERS = ((10.0, 0.085), (50.0, 0.080), (math.inf, 0.060))


def test_tiered_pricing_charges_each_tier_its_own_rate() -> None:
    assert tiered(0, TIERS) == 0
    assert tiered(1024, TIERS) == pytest.approx(1024 * 0.085)  # 1 TB, all in tier one
    ten_tb = 10 * TB / GB
    assert tiered(ten_tb + 1000, TIERS) == pytest.approx(ten_tb * 0.085 + 1000 * 0.080)
    sixty_tb = 60 * TB / GB
    assert tiered(sixty_tb, TIERS) == pytest.approx(
        ten_tb * 0.085 + 40 * TB / GB * 0.080 + 10 * TB / GB * 0.060)


def test_aws_cost_scales_a_short_period_to_a_month_and_back() -> None:
    offer = Offer("cdn", TIERS, per_10k_requests=0.01, free_tb_per_month=1.0,
                  free_requests_per_month=0)
    week = Usage(seconds=MONTH / 4, client_bytes=5 * TB, internal_bytes=0, requests=0, nodes=1)
    # A week of 5 TB is 20 TB a month: 1 TB free, 10 TB at 0.085, 9 TB at 0.080; a quarter.
    expected = ((10 * TB / GB) * 0.085 + (9 * TB / GB) * 0.080) / 4
    assert aws_cost(week, offer).traffic == pytest.approx(expected)
    with_requests = Usage(MONTH, 0, 0, requests=1e6, nodes=1)
    assert aws_cost(with_requests, offer).traffic == pytest.approx(1e6 / 1e4 * 0.01)


def test_deployment_cost_counts_only_traffic_beyond_what_the_nodes_include() -> None:
    deployment = Deployment("colo", included_tb_per_node=20, per_tb_over=1.0, monthly_per_node=40)
    month = Usage(MONTH, client_bytes=45 * TB, internal_bytes=5 * TB, requests=0, nodes=2)
    line = deployment_cost(month, deployment)
    assert line.traffic == pytest.approx(10.0)  # 50 TB sent, 40 TB included
    assert line.fixed == pytest.approx(80.0)


def test_report_names_its_prices_and_shows_the_saving() -> None:
    prices = Prices.load()
    assert prices.as_of and "built-in" in prices.path
    data = report(Usage(MONTH, 100 * TB, 10 * TB, 1e9, 4), prices)
    assert data["prices"]["as_of"] == prices.as_of
    assert [line["name"] for line in data["aws"]] == [o.name for o in prices.offers]
    assert data["saved_vs_cheapest_aws"] > 0  # 100 TB a month is what this project exists for


def test_edited_price_table_is_used(tmp_path: Path) -> None:
    text = (Path(sys.modules["atcdn.cli.report"].__file__).parent / "prices.toml").read_text()
    edited = tmp_path / "prices.toml"
    edited.write_text(text.replace('as_of = "', 'as_of = "edited '))
    assert Prices.load(edited).as_of.startswith("edited ")
    assert Prices.load(edited).path == str(edited)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400),
                                           ("45", 45), ("1.5h", 5400), ("2w", 1209600)])
def test_parse_period(text: str, seconds: float) -> None:
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30 days", "-1d", "1y"])
def test_parse_period_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_period(text)


# -- the status page (pure) --------------------------------------------------------------

def test_history_rates_skip_a_counter_reset() -> None:
    history = History()
    for at, served, hits, misses in [(0, 0, 0, 0), (10, 1000, 9, 1), (20, 3000, 18, 2),
                                     (30, 100, 1, 0),  # restarted: counters went back
                                     (40, 1100, 5, 0)]:
        history.add(Point(at, served, hits, misses))
    egress, ratio = history.rates()
    assert egress == [(10, 100.0), (20, 200.0), (40, 100.0)]
    assert ratio == [(10, 0.9), (20, 0.9), (40, 1.0)]
    assert History.from_json(history.to_json()).points == history.points
    assert History.from_json("not json").points == []


def test_page_escapes_and_hides_secrets() -> None:
    config = public_config({"origin": "<script>x</script>", "origin_token": "s3cret",
                            "purge_token": None})
    html = page("edge", [], History(), config, ["origin <down>"])
    assert "s3cret" not in html and "<script>x" not in html and "&lt;script&gt;" in html
    assert "origin &lt;down&gt;" in html
    assert config["origin_token"] == "set" and config["purge_token"] == "not set"
    assert "http://" not in html and "https://" not in html  # no external asset


# -- Prometheus rules and configuration ---------------------------------------------------

def test_promtool_checks_rules_config_and_rule_tests() -> None:
    promtool = need_tool("promtool")
    for argv in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *argv], cwd=OPS / "prometheus", capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def dashboard_exprs() -> list[str]:
    board = json.loads((OPS / "grafana" / "atcdn.json").read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


# -- against running nodes ----------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory):
    """A real origin holding one photo and a real edge that served it a few times."""
    tmp = tmp_path_factory.mktemp("observe")
    with running_origin(tmp, env={"ATCDN_ORIGIN_STATUS_INTERVAL": "0.5"}) as origin:
        data = photo(800, 600)
        cid = compute(data)
        put = httpx.put(f"{origin.url}/blob/{cid}", params={"did": DID}, content=data,
                        headers={"authorization": f"Bearer {TOKEN}"})
        assert put.status_code in (200, 201), put.text
        edge = start_edge(origin.url, tmp / "cache", tmp / "edge.log",
                          env={"ATCDN_PDS_FALLBACK": "0", "ATCDN_EDGE_STATUS_INTERVAL": "0.5"})
        try:
            served = 0
            for _ in range(5):
                r = httpx.get(f"{edge.url}/blob/{DID}/{cid}")
                assert r.status_code == 200
                served += len(r.content)
            yield origin, edge, served, cid
        finally:
            edge.proc.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(atcdn(*args), capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_status_shows_every_node_and_what_is_unhealthy(nodes) -> None:
    origin, edge, _, _ = nodes
    dead = f"http://127.0.0.1:{free_port()}"
    done = run_cli("status", origin.url, edge.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{origin.url}  [origin]  ok" in done.stdout
    assert f"{edge.url}  [edge]  ok" in done.stdout
    assert "hit ratio" in done.stdout and "2 node(s), 0 unhealthy" in done.stdout
    done = run_cli("status", edge.url, dead)
    assert done.returncode == 1
    assert f"{dead}  [unknown]  UNHEALTHY" in done.stdout and "unreachable" in done.stdout


def test_report_from_running_nodes_counts_the_bytes_they_served(nodes) -> None:
    origin, edge, served, _ = nodes
    done = run_cli("report", "--node", origin.url, "--node", edge.url, "--period", "1d", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["usage"]["client_bytes"] >= served  # every byte the client got is counted
    assert data["usage"]["client_bytes"] < served * 1.01
    assert data["usage"]["nodes"] == 2 and data["period_days"] == 1
    text = run_cli("report", "--node", origin.url, "--node", edge.url, "--period", "1d").stdout
    assert "Prices as of" in text and "CloudFront" in text


def test_a_real_prometheus_scrapes_the_nodes_and_loads_the_rules(nodes, tmp_path: Path) -> None:
    prometheus = need_tool("prometheus")
    origin, edge, _, _ = nodes
    shutil.copy(OPS / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    port = free_port()
    host = lambda url: url.split("://", 1)[1]  # noqa: E731
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": "atcdn-origin", "static_configs": [{"targets": [host(origin.url)]}]},
            {"job_name": "atcdn-edge", "static_configs": [{"targets": [host(edge.url)]}]},
        ]}))
    proc = Process([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}"], log=tmp_path / "prom.log")
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60)

        def query(expr: str) -> list:
            body = httpx.get(f"{api}/query", params={"query": expr}).json()
            assert body["status"] == "success", (expr, body)
            return body["data"]["result"]

        def ready() -> bool:
            up = {r["metric"]["job"] for r in query("up == 1")}
            return up == {"atcdn-origin", "atcdn-edge"} and bool(
                query("atcdn_edge_bytes_served_total"))

        deadline = time.monotonic() + 30
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert query("atcdn_edge_bytes_served_total"), proc.tail()
        targets = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
        assert {r["metric"]["job"] for r in query("up == 1")} == {"atcdn-origin", "atcdn-edge"}, [
            (t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
        groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
        assert [len(g["rules"]) for g in groups if g["name"] == "atcdn"] == [7]
        for expr in dashboard_exprs():  # every panel's query parses and runs
            query(expr)
        names = set(httpx.get(f"{api}/label/__name__/values").json()["data"])
        used = {name for expr in dashboard_exprs() for name in _metric_names(expr)}
        missing = {n for n in used if not n.startswith("node_")} - names
        assert not missing, f"dashboard queries metrics no node exports: {sorted(missing)}"
    finally:
        proc.stop()


def _metric_names(expr: str) -> set[str]:
    import re

    return {m for m in re.findall(r"\b(atcdn_[a-z_]+|node_[a-z_]+)\b", expr)
            if not m.endswith(("_bucket",))} | (
        {m[:-len("_bucket")] + "_bucket" for m in re.findall(r"\batcdn_[a-z_]+_bucket\b", expr)})


def test_status_page_in_chromium(nodes, tmp_path: Path) -> None:
    """Each node's /status renders in headless Chromium from itself alone, shows its
    numbers and hides its secrets, and draws its history as charts (the screenshot holds
    the charts' line colour)."""
    import numpy as np
    from PIL import Image

    from tests.helpers.npm import npm_package

    origin, edge, _, cid = nodes
    browser = npm_package("browser")
    node = need_tool("node")
    for _ in range(12):  # traffic across several history points
        httpx.get(f"{edge.url}/health")
        for path in ("/img/avatar_thumbnail/plain/{did}/{cid}@webp", "/blob/{did}/{cid}"):
            httpx.get(edge.url + path.format(did=DID, cid=cid))
        time.sleep(0.25)
    for url, kind, numbers in ((edge.url, "edge", "hit ratio"), (origin.url, "origin", "blobs")):
        page = httpx.get(url + "/status")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert f"atcdn {kind}" in page.text and numbers in page.text
        assert TOKEN not in page.text and ">set<" in page.text  # tokens: only "set"
        shot = tmp_path / f"{kind}.png"
        done = subprocess.run([node, str(browser / "screenshot.js"), url + "/status", str(shot),
                               str(tmp_path / f"profile-{kind}")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["status"] == 200 and seen["requests"] == [url + "/status"]
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
        line = int((np.abs(pixels - (31, 111, 235)) < 30).all(axis=2).sum())
        assert line > 200, f"{kind}: no chart line in the screenshot ({line} pixels)"

