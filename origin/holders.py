"""Holders every origin of a fleet shares: marker objects in the S3 store itself.

Which DIDs hold a CID decides ``?did=`` authorization, so every origin over one bucket
must see the same set. Each (CID, DID) is an empty object
``<holders_prefix><cid>/<did>/<via>``: written once and never changed (a holder stays
true; takedowns live in the takedown feed), so two origins writing the same marker
cannot conflict, and one ``ListObjectsV2`` of ``<holders_prefix><cid>/`` reads every
holder of a blob. The origin's SQLite index caches what it read (origin/index.py);
docs/fleet-store.md says why the store, and not the index, is the record.
"""

from __future__ import annotations

import asyncio
from typing import Any

from atcdn.core import did as dids

VIAS = ("push", "ingest", "pds")


class SharedHolders:
    """The holder markers of one bucket (the S3 store's own client and bucket)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def key(self, cid: str, did: str, via: str) -> str:
        return f"{self.prefix}{cid}/{did}/{via}"

    def add(self, cid: str, did: str, via: str) -> None:
        """Record that ``did`` holds ``cid`` (idempotent: the same empty object)."""
        self.client.put_object(Bucket=self.bucket, Key=self.key(cid, did, via), Body=b"")

    async def share(self, cid: str, did: str, via: str) -> None:
        """``add`` off the event loop (a request's handler awaits it before answering)."""
        await asyncio.to_thread(self.add, cid, did, via)

    def read(self, cid: str) -> dict[str, str]:
        """DID -> how it was learned, for every holder of ``cid`` any origin recorded.
        Keys that are not markers (a DID that does not parse, an unknown via) are
        ignored: the bucket is shared, so its contents are not trusted blindly."""
        found: dict[str, str] = {}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}{cid}/")
        for page in pages:
            for item in page.get("Contents", []):
                did, _, via = item["Key"][len(self.prefix) + len(cid) + 1:].rpartition("/")
                if via in VIAS and _canonical(did) == did:
                    found.setdefault(did, via)
        return found


def _canonical(text: str) -> str | None:
    try:
        return dids.parse(text)
    except dids.DIDError:
        return None
