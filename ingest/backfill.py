"""``atcdn ingest backfill``: every blob a PDS already holds, into the origin.

The accounts are every repo of a PDS (``com.atproto.sync.listRepos``, paged) or the DIDs
given; each account's blobs come from ``com.atproto.sync.listBlobs`` (paged until a page is
empty) and go through the same ingester as the firehose's (origin presence check, polite
verified fetch, store). Progress is saved after every page, so a backfill killed at any
moment resumes where it was (blobs stored meanwhile are found present, not fetched again);
a completed backfill clears its state, so running it again only checks presence.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from atcdn.core import did as dids
from atcdn.core.errors import AtcdnError, BlockedAddress
from atcdn.core.settings import IngestSettings
from atcdn.ingest.blobrefs import BlobRef
from atcdn.ingest.context import IngestContext
from atcdn.ingest.politeness import backoff
from atcdn.ingest.progress import Reporter, Tally

log = logging.getLogger("atcdn.ingest")

REFUSALS = frozenset({400, 401, 403, 404, 410})


class ListingFailed(Exception):
    """A listRepos/listBlobs page could not be had; ``refused`` when the PDS said no."""

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


class Backfill:
    def __init__(self, settings: IngestSettings, reporter: Reporter, *, pds: str | None = None,
                 accounts: list[str] | None = None, page_size: int = 1000) -> None:
        if (pds is None) == (not accounts):
            raise ValueError("give a PDS URL or DIDs, not both or neither")
        self.settings = settings
        self.reporter = reporter
        self.pds = pds.rstrip("/") if pds else None
        self.accounts = [dids.parse(d) for d in accounts or []]
        self.page_size = page_size
        self.ctx = IngestContext.open(settings)
        self.tally = Tally()
        self._slots = asyncio.Semaphore(settings.workers)

    async def run(self) -> dict[str, int]:
        """Backfill everything; returns the summary counts."""
        try:
            state = self.ctx.state
            if self.pds is not None:
                await self._list_repos(self.pds)
            else:
                state.add_repos(self.accounts)
            todo = state.repos_to_backfill(pds=self.pds, dids=self.accounts)
            done, known = state.backfill_progress()
            for number, (did, cursor) in enumerate(todo, start=done + 1):
                self.reporter.account(did, number, known)
                await self._account(did, cursor)
            state.clear_backfill()
        finally:
            self.tally.bytes = self.ctx.ingester.stored_bytes
            self.reporter.close(self.tally)
            await self.ctx.close()
        return self.tally.summary()

    async def _list_repos(self, pds: str) -> None:
        cursor, listed = self.ctx.state.repo_list_position(pds)
        while not listed:
            params: dict[str, Any] = {"limit": self.page_size}
            if cursor:
                params["cursor"] = cursor
            page = await self._get(f"{pds}/xrpc/com.atproto.sync.listRepos", params)
            repos = [r for r in page.get("repos") or [] if isinstance(r, dict)]
            active = []
            for repo in repos:
                try:
                    did = dids.parse(str(repo.get("did")))
                except dids.DIDError:
                    continue
                if repo.get("active", True) is False:
                    log.info("backfill: skipping %s (%s)", did, repo.get("status", "inactive"))
                    continue
                active.append(did)
            next_cursor = page.get("cursor") if isinstance(page.get("cursor"), str) else None
            listed = not repos or next_cursor is None or next_cursor == cursor
            self.ctx.state.save_repo_page(pds, None if listed else next_cursor, active)
            cursor = next_cursor

    async def _account(self, did: str, cursor: str | None) -> None:
        try:
            pds = self.pds or await self.ctx.resolver.pds(did)
            while True:
                params: dict[str, Any] = {"did": did, "limit": self.page_size}
                if cursor:
                    params["cursor"] = cursor
                page = await self._get(f"{pds}/xrpc/com.atproto.sync.listBlobs", params)
                found = [c for c in page.get("cids") or [] if isinstance(c, str)]
                if not found:
                    break
                self.reporter.found(len(found))
                await asyncio.gather(*(self._blob(did, pds, cid) for cid in found))
                cursor = page.get("cursor") if isinstance(page.get("cursor"), str) else found[-1]
                self.ctx.state.save_blob_position(did, cursor, done=False)
        except (ListingFailed, AtcdnError) as exc:
            self.tally.accounts_failed += 1
            log.warning("backfill: account %s: %s", did, exc)
        self.ctx.state.save_blob_position(did, cursor, done=True)

    async def _blob(self, did: str, pds: str, cid: str) -> None:
        async with self._slots:
            outcome = await self.ctx.ingester.ingest(did, BlobRef(cid, None, None), pds)
        self.tally.add(outcome)
        self.tally.bytes = self.ctx.ingester.stored_bytes
        self.reporter.advance(self.tally)

    async def _get(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        """A listing page (JSON object), retried politely on failures worth retrying."""
        host = httpx.URL(url).netloc.decode()
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.ctx.hosts.slot(host):
                    res = await self.ctx.public.get(url, params=params)
                if res.status_code == 200:
                    body = res.json()
                    if isinstance(body, dict):
                        return body
                    problem = "answer is not a JSON object"
                elif res.status_code in REFUSALS:
                    raise ListingFailed(f"{url}: HTTP {res.status_code} {res.text[:200]}", True)
                else:
                    problem = f"HTTP {res.status_code}"
            except BlockedAddress as exc:
                raise ListingFailed(str(exc), True) from None
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt > self.settings.retries:
                raise ListingFailed(f"{url}: {problem} (after {attempt} attempts)", False)
            await asyncio.sleep(backoff(attempt, self.settings.retry_backoff))
