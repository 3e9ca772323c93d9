"""The miss path: what a request gets when the memory tier does not hold its entry.

``/blob``: the source itself (edge/sources.py), with a safe Content-Type. ``/img``: the
rendition from the disk tier, else the source transformed in the worker pool (once per
node for each rendition: a transform of verified bytes is the same work whoever asks),
stored on disk. Either way the entry then goes into this worker's memory tier, unless a
purge or takedown arrived while it was being made (edge/gate.py).
"""

from __future__ import annotations

import time

from atcdn.core.errors import AtcdnError
from atcdn.core.mime import SNIFF_BYTES, sniff
from atcdn.core.settings import EdgeSettings
from atcdn.edge import urls
from atcdn.edge.cache import DiskTier, Entry, Headers, MemoryTier, Value, entry_of
from atcdn.core.flight import SingleFlight
from atcdn.edge.gate import Gate
from atcdn.edge.metrics import Metrics
from atcdn.edge.presets import CONTENT_TYPES, Format
from atcdn.edge.responses import blob_type
from atcdn.edge.shares import Shares
from atcdn.edge.sources import Sources, purged_meanwhile, read_source
from atcdn.edge.transform import Transformer


class Renditions:
    def __init__(self, settings: EdgeSettings, disk: DiskTier, memory: MemoryTier,
                 sources: Sources, transformer: Transformer, flight: SingleFlight, gate: Gate,
                 metrics: Metrics, shares: Shares | None = None) -> None:
        self.settings = settings
        self.shares = shares  # a stranger's renditions count in its share
        self.disk = disk
        self.memory = memory
        self.sources = sources
        self.transformer = transformer
        self.flight = flight
        self.gate = gate
        self.metrics = metrics

    async def blob(self, req: urls.BlobRequest, key: str) -> tuple[Entry, str]:
        started = self.gate.clock()
        value, outcome = await self.sources.get(req.did, req.cid)
        content_type, extra = blob_type(sniff(self.disk.head(value, SNIFF_BYTES)))
        entry = self._entry(value, urls.blob_etag(req.cid), content_type, extra)
        self._remember(key, entry, started, req.did, req.cid)
        return entry, outcome

    async def image(self, req: urls.ImageRequest, fmt: Format, key: str) -> tuple[Entry, str]:
        started = self.gate.clock()
        value = self.disk.get(key)
        outcome = "disk"
        if value is None:
            source, _ = await self.sources.get(req.did, req.cid)
            value = await self.flight.run(key, lambda: self._render(req, fmt, key, source))
            outcome = "miss"
        entry = self._entry(value, urls.image_etag(req.cid, req.preset.name, fmt),
                            CONTENT_TYPES[fmt])
        self._remember(key, entry, started, req.did, req.cid)
        return entry, outcome

    async def _render(self, req: urls.ImageRequest, fmt: Format, key: str,
                      source: Value) -> Value:
        value = self.disk.get(key)  # rendered by another process while we waited
        if value is not None:
            return value
        started = time.monotonic()
        try:
            body = read_source(source, self.settings.image_max_source_bytes)
            rendered = await self.transformer.transform(body, req.preset, fmt, key=key)
        except AtcdnError as exc:
            self.metrics.transforms.labels(str(exc.status)).inc()
            raise
        self.metrics.transforms.labels("200").inc()
        self.metrics.transform_seconds.observe(time.monotonic() - started)
        self.disk.put_bytes(key, rendered.body, req.cid)
        if self.shares is not None:
            self.shares.keep(req.cid, len(rendered.body))
        return self.disk.get(key) or rendered.body

    def _entry(self, value: Value, etag: str, content_type: str,
               extra: Headers = ()) -> Entry:  # type: ignore[assignment]
        return entry_of(value, etag, content_type, file_max=self.settings.memory_file_max,
                        extra=extra)

    def _remember(self, key: str, entry: Entry, started: int, did: str, cid: str) -> None:
        """Keep the entry in memory, unless a purge came in since ``started``: then drop
        the disk copy this request may have written too (and 451 if it was a takedown)."""
        if self.gate.purged_since(started, did, cid):
            self.disk.delete(key)
            self.gate.recheck(did, cid)
            if entry.path is not None:  # its file may be gone with the purge
                raise purged_meanwhile(cid)
            return
        self.memory.put(key, entry)
