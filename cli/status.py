"""``atcdn status URL...``: one screen with every node's numbers and what is unhealthy."""

from __future__ import annotations

from atcdn.cli.scrape import Node, scrape_all
from atcdn.core.status import numbers

FULL = 0.95  # a disk tier this full is reported


def problems(node: Node) -> list[str]:
    """What an operator should look at on ``node`` (pure)."""
    found = []
    if node.error:
        found.append(node.error)
    for reason in node.health.get("reasons", []) if isinstance(node.health, dict) else []:
        found.append(str(reason))
    failures = (node.total("atcdn_edge_verification_failures_total")
                + node.total("atcdn_origin_verification_failures_total"))
    if failures:
        found.append(f"{failures:,.0f} verification failure(s): an upstream sent wrong bytes")
    budget = node.total("atcdn_edge_disk_cache_budget_bytes")
    if budget and node.total("atcdn_edge_disk_cache_bytes") >= FULL * budget:
        found.append("disk cache full (evicting)")
    errors = sum(v for status, v in node.by("atcdn_edge_errors_total", "status").items()
                 if status.startswith("5") and status not in ("502", "503", "504"))
    errors += sum(v for status, v in node.by("atcdn_origin_requests_total", "status").items()
                  if status.startswith("5") and status not in ("502", "503", "504"))
    if errors:
        found.append(f"{errors:,.0f} internal error answer(s)")
    return found


def render(nodes: list[Node]) -> str:
    """The screen (pure)."""
    out = []
    for node in nodes:
        trouble = problems(node)
        out.append(f"{node.url}  [{node.kind}]  {'UNHEALTHY' if trouble else 'ok'}")
        out += [f"  ! {p}" for p in trouble]
        out += [f"  {label:<28} {value}" for label, value in numbers(node.kind, node.samples)]
        out.append("")
    unhealthy = sum(1 for n in nodes if problems(n))
    out.append(f"{len(nodes)} node(s), {unhealthy} unhealthy")
    return "\n".join(out)


def run(urls: list[str]) -> tuple[str, bool]:
    """(screen, all healthy)."""
    nodes = scrape_all(urls)
    return render(nodes), not any(problems(n) for n in nodes)
