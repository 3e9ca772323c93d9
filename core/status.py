"""What a node shows about itself: a snapshot of its counters, a short history of them,
and the status page built from both (pure: no I/O; the apps feed it their /metrics text).

The page is one HTML document with inline CSS and inline SVG charts: no script, no
external asset, so it works offline and behind any firewall.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]
HISTORY_POINTS = 360  # one hour at one point every 10 s


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(value for sample, have, value in samples
               if sample == name and all(have.get(k) == v for k, v in labels.items()))


def by_label(samples: Iterable[Sample], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for sample, have, value in samples:
        if sample == name:
            out[have.get(label, "")] = out.get(have.get(label, ""), 0.0) + value
    return out


@dataclass(frozen=True)
class Point:
    """Cumulative counters at one moment; charts plot the differences between points."""

    at: float
    served_bytes: float
    hits: float
    misses: float


def point(samples: list[Sample], at: float) -> Point:
    served = (total(samples, "atcdn_edge_bytes_served_total")
              + total(samples, "atcdn_origin_bytes_out_total"))
    return Point(at, served, total(samples, "atcdn_edge_cache_hits_total"),
                 total(samples, "atcdn_edge_cache_misses_total"))


@dataclass
class History:
    """The last ``HISTORY_POINTS`` points, oldest first; serialisable as JSON."""

    points: list[Point] = field(default_factory=list)

    def add(self, p: Point) -> None:
        self.points.append(p)
        del self.points[:-HISTORY_POINTS]

    def to_json(self) -> str:
        return json.dumps([[p.at, p.served_bytes, p.hits, p.misses] for p in self.points])

    @classmethod
    def from_json(cls, text: str) -> History:
        try:
            rows = json.loads(text)
            return cls([Point(*map(float, row)) for row in rows][-HISTORY_POINTS:])
        except (ValueError, TypeError):
            return cls()

    def rates(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """(egress bytes/s, hit ratio) between consecutive points; a counter reset
        (restart) starts afresh rather than plotting a negative rate."""
        egress, ratio = [], []
        for a, b in zip(self.points, self.points[1:]):
            span = b.at - a.at
            if span <= 0 or b.served_bytes < a.served_bytes or b.hits < a.hits:
                continue
            egress.append((b.at, (b.served_bytes - a.served_bytes) / span))
            lookups = (b.hits - a.hits) + (b.misses - a.misses)
            if lookups > 0:
                ratio.append((b.at, (b.hits - a.hits) / lookups))
        return egress, ratio


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


def cache_ratios(disk_hits: float, misses: float, miss_bytes: float,
                 served_bytes: float) -> list[tuple[str, str]]:
    """The disk tier's own hit ratio (of the lookups that missed memory: what its
    eviction policy earns) and the byte hit ratio (bytes not fetched or made again)."""
    disk = disk_hits + misses
    return [("disk tier hit ratio", f"{disk_hits / disk:.1%}" if disk else "n/a"),
            ("byte hit ratio", f"{1 - miss_bytes / served_bytes:.1%}" if served_bytes else "n/a")]


def numbers(kind: str, samples: list[Sample]) -> list[tuple[str, str]]:
    """The node's headline numbers, as (label, human value) rows."""
    rows: list[tuple[str, str]] = []
    if kind == "edge":
        hits = by_label(samples, "atcdn_edge_cache_hits_total", "tier")
        misses = total(samples, "atcdn_edge_cache_misses_total")
        lookups = sum(hits.values()) + misses
        rows.append(("hit ratio", f"{sum(hits.values()) / lookups:.1%}" if lookups else "n/a"))
        rows += cache_ratios(hits.get("disk", 0.0), misses,
                             total(samples, "atcdn_edge_cache_miss_bytes_total"),
                             total(samples, "atcdn_edge_bytes_served_total"))
        for tier in sorted(hits):
            rows.append((f"hits from {tier}", f"{hits[tier]:,.0f}"))
        rows.append(("misses", f"{misses:,.0f}"))
        for route, served in sorted(by_label(samples, "atcdn_edge_bytes_served_total", "route").items()):
            rows.append((f"served /{route}", human_bytes(served)))
        for name, label in (("atcdn_edge_disk_cache_bytes", "disk cache"),
                            ("atcdn_edge_memory_cache_bytes", "memory cache (all workers)")):
            if any(s[0] == name for s in samples):
                rows.append((label, human_bytes(total(samples, name))))
        budget = total(samples, "atcdn_edge_disk_cache_budget_bytes")
        if budget:
            rows.append(("disk cache budget", human_bytes(budget)))
        rows += origin_rows(samples)
        for name, label in (("atcdn_edge_disk_cache_entries", "disk cache entries"),
                            ("atcdn_video_transcode_queue_length", "transcodes queued"),
                            ("atcdn_edge_verification_failures_total", "verification failures")):
            if any(s[0] == name for s in samples):
                rows.append((label, f"{total(samples, name):,.0f}"))
    else:
        for name, label in (("atcdn_origin_blobs", "blobs"),):
            if any(s[0] == name for s in samples):
                rows.append((label, f"{total(samples, name):,.0f}"))
        for name, label in (("atcdn_origin_blob_bytes", "stored"),
                            ("atcdn_origin_bytes_in_total", "received"),
                            ("atcdn_origin_bytes_out_total", "served")):
            if any(s[0] == name for s in samples):
                rows.append((label, human_bytes(total(samples, name))))
        statuses = by_label(samples, "atcdn_origin_requests_total", "status")
        rows.append(("requests", ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(statuses.items()))
                     or "none"))
    lag = total(samples, "atcdn_takedown_feed_lag_seconds")
    if any(s[0] == "atcdn_takedown_feed_lag_seconds" for s in samples):
        rows.append(("takedown feed lag", f"{lag:,.1f} s"))
    return rows


def origin_rows(samples: list[Sample]) -> list[tuple[str, str]]:
    """An edge with several origins: each one's state, requests and failovers."""
    up = by_label(samples, "atcdn_edge_origin_up", "origin")
    if len(up) < 2:
        return []
    requests = by_label(samples, "atcdn_edge_origin_requests_total", "origin")
    failovers = by_label(samples, "atcdn_edge_origin_failovers_total", "origin")
    return [(f"origin {url}", (f"{'up' if up[url] else 'DOWN'}, {requests.get(url, 0):,.0f}"
                               f" requests, {failovers.get(url, 0):,.0f} failovers"))
            for url in sorted(up)]


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _chart(title: str, series: list[tuple[float, float]], fmt, width: int = 560,
           height: int = 140) -> str:
    """An inline SVG line chart of (time, value)."""
    head = f"<h2>{html.escape(title)}</h2>"
    if len(series) < 2:
        return head + '<p class="quiet">not enough history yet (a point every 10 s)</p>'
    t0, t1 = series[0][0], series[-1][0]
    top = max(v for _, v in series) or 1.0
    pts = " ".join(f"{(t - t0) / ((t1 - t0) or 1) * (width - 60) + 50:.1f},"
                   f"{height - 20 - v / top * (height - 40):.1f}" for t, v in series)
    return (head + f'<svg role="img" aria-label="{html.escape(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}">'
            f'<line x1="50" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" class="axis"/>'
            f'<line x1="50" y1="20" x2="50" y2="{height - 20}" class="axis"/>'
            f'<text x="4" y="24">{html.escape(fmt(top))}</text>'
            f'<text x="4" y="{height - 20}">0</text>'
            f'<text x="50" y="{height - 4}">{_ago(t1 - t0)}</text>'
            f'<text x="{width - 40}" y="{height - 4}">now</text>'
            f'<polyline points="{pts}" class="line"/></svg>')


def page(kind: str, samples: list[Sample], history: History, config: Mapping[str, object],
         problems: list[str]) -> str:
    """The status page of one node."""
    egress, ratio = history.rates()
    state = ("<p class=\"bad\">" + "<br>".join(html.escape(p) for p in problems) + "</p>"
             if problems else '<p class="ok">healthy</p>')
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in numbers(kind, samples))
    conf = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in sorted(config.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>atcdn {kind} status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: .2em 1em .2em 0; border-bottom: 1px solid #eee; }}
th {{ font-weight: 600; color: #555; }}
.ok {{ color: #176f2c; font-weight: 600; }} .bad {{ color: #b00020; font-weight: 600; }}
.quiet {{ color: #888; }} svg text {{ font-size: 11px; fill: #666; }}
.axis {{ stroke: #bbb; }} .line {{ fill: none; stroke: #1f6feb; stroke-width: 2; }}
</style></head><body>
<h1>atcdn {html.escape(kind)}</h1>
{state}
<table>{table}</table>
{_chart("egress (bytes/s)", egress, lambda v: human_bytes(v) + "/s")}
{_chart("hit ratio", ratio, lambda v: f"{v:.0%}") if kind == "edge" else ""}
<h2>configuration</h2>
<table>{conf}</table>
</body></html>
"""


SECRET_WORDS = ("token", "secret", "password", "key")


def public_config(settings: Mapping[str, object]) -> dict[str, object]:
    """Settings fit to show: anything secret-like is replaced by whether it is set."""
    return {k: ("set" if v else "not set") if any(w in k.lower() for w in SECRET_WORDS) else v
            for k, v in settings.items()}
