"""``atcdn ingest status``: what the ingest database says, and a running follower's health."""

from __future__ import annotations

from typing import Any

import httpx
from atcdn.core.settings import IngestSettings
from atcdn.ingest.records import RecordIndex
from atcdn.ingest.state import State


def status(settings: IngestSettings, url: str | None) -> tuple[dict[str, Any], bool]:
    """(report, healthy): saved cursors, record count, takedowns made, backfill progress;
    with ``url``, the follower's ``/health`` too (unhealthy when it does not answer 200)."""
    state, records = State(settings.data_dir), RecordIndex(settings.data_dir)
    try:
        done, known = state.backfill_progress()
        report: dict[str, Any] = {
            "dataDir": str(settings.data_dir),
            "cursors": [{"source": source, "seq": seq, "savedAt": at}
                        for source, seq, at in state.cursors()],
            "recordsIndexed": records.count(),
            "accountsTakenDownByIngest": state.own_takedowns(),
            "backfillInProgress": {"accountsDone": done, "accountsKnown": known},
        }
    finally:
        state.close()
        records.close()
    healthy = True
    if url:
        try:
            res = httpx.get(url.rstrip("/") + "/health", timeout=5.0)
            report["follower"] = res.json()
            healthy = res.status_code == 200
        except (httpx.HTTPError, ValueError) as exc:
            report["follower"] = {"status": "unreachable", "error": str(exc)}
            healthy = False
    return report, healthy
