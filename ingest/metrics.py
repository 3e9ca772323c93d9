"""Prometheus metrics of ``atcdn ingest`` (one process, its own registry)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

# Outcomes of one blob reference that are not failures.
SKIPS = frozenset({"present", "taken_down", "mime", "too_large", "duplicate"})


class IngestMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("atcdn_ingest_events", "firehose events by kind", ["kind"],
                              registry=r)
        self.malformed = Counter("atcdn_ingest_malformed_frames",
                                 "frames skipped as malformed, by reason", ["reason"], registry=r)
        self.bad_records = Counter("atcdn_ingest_bad_records",
                                   "record operations skipped, by reason", ["reason"], registry=r)
        self.error_frames = Counter("atcdn_ingest_error_frames", "error frames by error",
                                    ["error"], registry=r)
        self.infos = Counter("atcdn_ingest_info_frames", "#info frames by name", ["name"],
                             registry=r)
        self.reconnects = Counter("atcdn_ingest_reconnects", "firehose reconnections",
                                  registry=r)
        self.connected = Gauge("atcdn_ingest_connected", "1 while subscribed", registry=r)
        self.lag = Gauge("atcdn_ingest_lag_seconds", "now minus the last event's time",
                         registry=r)
        self.seq = Gauge("atcdn_ingest_seq", "last sequence number received", registry=r)
        self.cursor = Gauge("atcdn_ingest_cursor", "last sequence number durably handled",
                            registry=r)
        self.queue_depth = Gauge("atcdn_ingest_queue_depth", "blobs waiting for a worker",
                                 registry=r)
        self.in_flight = Gauge("atcdn_ingest_events_in_flight",
                               "events received but not fully handled", registry=r)
        self.fetched = Counter("atcdn_ingest_blobs_fetched", "blobs downloaded and verified",
                               registry=r)
        self.fetched_bytes = Counter("atcdn_ingest_fetched_bytes", "verified bytes downloaded",
                                     registry=r)
        self.stored = Counter("atcdn_ingest_blobs_stored", "blobs stored at the origin",
                              registry=r)
        self.skipped = Counter("atcdn_ingest_blobs_skipped", "blobs not fetched, by reason",
                               ["reason"], registry=r)
        self.failed = Counter("atcdn_ingest_blobs_failed", "blobs given up on, by reason",
                              ["reason"], registry=r)
        self.accounts = Counter("atcdn_ingest_account_actions",
                                "account takedowns/restores applied at the origin", ["action"],
                                registry=r)

    def outcome(self, outcome: str) -> None:
        """Count one blob reference's outcome: stored, a skip, or a failure reason."""
        if outcome == "stored":
            self.stored.inc()
        elif outcome in SKIPS:
            self.skipped.labels(outcome).inc()
        else:
            self.failed.labels(outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
