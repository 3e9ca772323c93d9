"""Applying labels at the origin: make what is done match what the labels want.

``reconcile(uri)`` compares the labels that hold on a subject (label_state.py) with what
was applied and acts on the difference:

- an account (``did:...``): take the DID down / restore it;
- a record (``at://did/...``): take down each blob CID the record index lists for it,
  in the scope (DID, CID) — that repo's copy only, Bluesky's own per-repo semantics —
  or, on an origin that has no such scope yet (it answers 400 to ``{"did", "cid"}``),
  the CID everywhere (logged once: broader than the label). A record the index has not
  seen stays *pending*; ``on_record(uri)`` (the firehose follower calls it after
  indexing a record) and the follower's periodic sweep apply it once the record is known;
- no holding label any more (``neg``, or ``exp`` passed): restore exactly what this
  follower took down itself.

Both followers may call this for one database; every step is idempotent.
Takedowns also go to the AWS takedown feed when ``ATCDN_INGEST_PUBLISH_FEED`` is set.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from atcdn.core.settings import IngestSettings
from atcdn.ingest.label_state import Applied, LabelState
from atcdn.ingest.origin_api import OriginClient, OriginRefused
from atcdn.ingest.politeness import backoff
from atcdn.ingest.quietlog import QuietLog
from atcdn.ingest.records import RecordIndex

log = logging.getLogger("atcdn.ingest.labels")


class LabelActions:
    def __init__(self, settings: IngestSettings, state: LabelState, records: RecordIndex,
                 origin: OriginClient) -> None:
        self.settings = settings
        self.state = state
        self.records = records
        self.origin = origin
        self.pair_scope = True  # until the origin says it has no (DID, CID) scope
        self.quiet = QuietLog(log)
        self.counts: dict[str, int] = {}
        self._feed: Any = None
        self._lock = asyncio.Lock()

    async def on_record(self, uri: str) -> None:
        """A record was (re)indexed: apply any label waiting for it."""
        await self.reconcile(uri)

    async def reconcile(self, uri: str, now: datetime | None = None) -> None:
        async with self._lock:  # one subject at a time: the database rows are shared
            await self._reconcile(uri, now or datetime.now(UTC))

    async def sweep(self) -> None:
        """Apply pending record labels whose record is now indexed; lift expired labels."""
        now = datetime.now(UTC)
        for uri in self.state.pending(now) + self.state.expired(now):
            await self.reconcile(uri, now)

    async def _reconcile(self, uri: str, now: datetime) -> None:
        wanted = self.state.wanted(uri, now)
        done = self.state.applied(uri)
        if wanted:
            await self._apply(uri, done)
        elif done is not None:
            for target in done.own:
                did, cid = (target, None) if target.startswith("did:") else (done.did, target)
                await self._target("restore", did, cid)
            self.state.clear_applied(uri)
            self._count("restored")
            log.info("labels on %s no longer hold: restored %s", uri, done.own or "nothing")

    async def _apply(self, uri: str, done: Applied | None) -> None:
        if uri.startswith("did:"):
            if done is None or not done.complete:
                # The intent is saved first: after a crash the replay finds it, and the
                # origin's "down already" is then our own doing.
                self.state.set_applied(uri, Applied(uri, None, [uri], complete=False))
                already = await self._target("takedown", uri, None) and done is None
                self.state.set_applied(uri, Applied(uri, None, [] if already else [uri]))
                self._count("account_takedown")
                log.info("label takes account %s down%s", uri,
                         " (it was down already)" if already else "")
            return
        indexed = self.records.blobs_of(uri)
        if indexed is None:
            if done is None:
                self._count("pending")
            return
        did, cids = indexed
        have = set(done.cids or ()) if done else set()
        new = [cid for cid in cids if cid not in have]
        if done is not None and not new:
            return
        own = list(done.own) if done else []
        for cid in new:
            # The intent is saved before acting, so a crash replays it as our own.
            self.state.set_applied(uri, Applied(did, sorted(have), own + [cid]))
            already = await self._target("takedown", did, cid)
            have.add(cid)
            if not already:
                own.append(cid)
            self.state.set_applied(uri, Applied(did, sorted(have), own))
        self.state.set_applied(uri, Applied(did, sorted(have), own))
        self._count("record_takedown")
        log.info("label takes down record %s: %d blob(s) of %s", uri, len(new), did)

    async def _target(self, action: str, did: str, cid: str | None) -> bool:
        """Take down or restore at the origin (and on the feed); True if the origin says
        the target was in that state already."""
        body: dict[str, str] = {"did": did}
        if cid is not None:
            body = {"did": did, "cid": cid} if self.pair_scope else {"cid": cid}
        try:
            answer = await self.origin.admin(action, body)
        except OriginRefused as exc:
            if cid is None or not self.pair_scope or exc.status != 400:
                raise
            self.pair_scope = False
            log.warning("origin %s has no (DID, CID) takedown scope (%s); record labels take "
                        "the blob's CID down for every DID instead", self.origin.base, exc)
            body = {"cid": cid}
            answer = await self.origin.admin(action, body)
        await self._publish(action, did if cid is None or self.pair_scope else None, cid)
        if "wasTakenDown" in answer:  # this origin's answer
            was = bool(answer["wasTakenDown"])
            return was if action == "takedown" else not was
        return not answer.get("changed", True)  # the (DID, CID)-scoped origin's answer

    async def _publish(self, action: str, did: str | None, cid: str | None) -> None:
        """Put the action on the AWS takedown feed too (if configured), so edges that
        follow the feed act within their poll interval."""
        if not self.settings.publish_feed:
            return
        from atcdn.core.feed import Feed
        from atcdn.core.settings import ControlSettings

        attempt = 0
        while True:  # the cursor must not move past an action edges never saw
            attempt += 1
            try:
                if self._feed is None:
                    self._feed = Feed(ControlSettings())
                try:
                    await asyncio.to_thread(self._feed.publish, action, did=did, cid=cid,
                                            reason="label")
                except ValueError:  # a feed without the (DID, CID) scope: the CID
                    await asyncio.to_thread(self._feed.publish, action, cid=cid,
                                            reason="label")
                return
            except Exception as exc:  # boto3 raises many types; all mean "try again"
                self.quiet.warning("feed", "cannot publish %s to the takedown feed: %s",
                                   action, exc)
                await asyncio.sleep(backoff(attempt, 1.0, cap=30.0))

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
