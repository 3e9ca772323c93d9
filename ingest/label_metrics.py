"""Prometheus metrics of ``atcdn ingest labels`` (one process, its own registry)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)


class LabelMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.labels = Counter(
            "atcdn_ingest_labels", "labels received, by outcome (applied, negation, "
            "other_value, bad_signature, foreign_source, bad_label, origin_refused)",
            ["outcome"], registry=r)
        self.malformed = Counter("atcdn_ingest_label_malformed_frames",
                                 "label frames skipped as malformed, by reason", ["reason"],
                                 registry=r)
        self.error_frames = Counter("atcdn_ingest_label_error_frames", "error frames by error",
                                    ["error"], registry=r)
        self.infos = Counter("atcdn_ingest_label_info_frames", "#info frames by name", ["name"],
                             registry=r)
        self.reconnects = Counter("atcdn_ingest_label_reconnects", "label stream reconnections",
                                  registry=r)
        self.connected = Gauge("atcdn_ingest_label_connected", "1 while subscribed", registry=r)
        self.cursor = Gauge("atcdn_ingest_label_cursor", "last label seq durably handled",
                            registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
