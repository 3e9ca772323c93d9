"""The parts both ``ingest follow`` and ``ingest backfill`` use, built from the settings:
the ingest database (state and record index), the origin client, the guarded client for
DID documents and PDSes, and the blob ingester with its politeness limits."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from atcdn.core.resolver import Resolver
from atcdn.core.settings import IngestSettings
from atcdn.core.ssrf import public_client
from atcdn.ingest.blobrefs import parse_patterns
from atcdn.ingest.blobs import BlobIngester, Limits
from atcdn.ingest.metrics import IngestMetrics
from atcdn.ingest.origin_api import OriginClient
from atcdn.ingest.politeness import HostLimits
from atcdn.ingest.records import RecordIndex
from atcdn.ingest.spool import Spool
from atcdn.ingest.state import State

USER_AGENT = "atcdn-ingest (+https://github.com/atcdn)"


@dataclass
class IngestContext:
    settings: IngestSettings
    state: State
    records: RecordIndex
    origin: OriginClient
    public: httpx.AsyncClient
    resolver: Resolver
    hosts: HostLimits
    ingester: BlobIngester
    metrics: IngestMetrics

    @classmethod
    def open(cls, settings: IngestSettings) -> IngestContext:
        data = settings.data_dir
        metrics = IngestMetrics()
        origin = OriginClient(settings.origin, settings.origin_token, settings.origin_admin_token)
        public = public_client(
            allow_private_networks=settings.allow_private_networks,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            user_agent=USER_AGENT)
        resolver = Resolver(public, settings.plc_url)
        hosts = HostLimits(settings.pds_concurrency, settings.pds_rate)
        limits = Limits(parse_patterns(settings.mime_types), settings.max_blob_bytes,
                        settings.retries, settings.retry_backoff, settings.fetch_deadline)
        ingester = BlobIngester(origin=origin, resolver=resolver, pds_client=public, hosts=hosts,
                                spool=Spool(data / "spool"), limits=limits, metrics=metrics)
        return cls(settings, State(data), RecordIndex(data), origin, public, resolver, hosts,
                   ingester, metrics)

    async def close(self) -> None:
        await self.origin.close()
        await self.public.aclose()
        self.state.close()
        self.records.close()
