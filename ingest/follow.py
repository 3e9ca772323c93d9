"""``atcdn ingest follow``: subscribe to a relay's or PDS's ``subscribeRepos`` and bring every
blob new records reference into the origin before anyone asks for it.

One reader task reads frames in order: it decodes each (frames.py), updates the record
index, screens blob references and puts them on a bounded queue (when the queue is full
the reader waits, the websocket stops being read and TCP pushes back on the sender).
Worker tasks fetch and store the blobs (blobs.py). ``#account`` takedowns and restores
are applied by the reader itself, in stream order. The cursor saved to disk only moves
past an event once it and everything before it are fully handled (cursor.py), so a
kill -9 at any moment leads to a replay of the unfinished tail, never a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from atcdn.core.settings import IngestSettings
from atcdn.ingest.blobrefs import BlobRef, blob_refs
from atcdn.ingest.context import IngestContext
from atcdn.ingest.cursor import CursorTracker, Pending
from atcdn.ingest.frames import (
    Account,
    Commit,
    ErrorFrame,
    Event,
    FrameError,
    Identity,
    Info,
    Other,
    decode,
)
from atcdn.ingest.origin_api import OriginAuthError
from atcdn.ingest.politeness import backoff
from atcdn.ingest.quietlog import QuietLog
from atcdn.ingest.records import record_uri
from atcdn.ingest.status import serve_status, status_app
from atcdn.ingest.stream import Connection, StreamError, Subscription, stream_url

log = logging.getLogger("atcdn.ingest")

TAKEDOWN_STATUSES = frozenset({"takendown", "suspended", "deleted"})
DRAIN_SECONDS = 10.0


def subscribe_url(source: str, cursor: int | None) -> str:
    """The subscribeRepos URL of ``source`` (``ws(s)://host[:port]``, path optional),
    resuming after ``cursor`` when given (pure)."""
    return stream_url(source, "com.atproto.sync.subscribeRepos", cursor)


def event_lag(event_time: str, now: float) -> float | None:
    """Seconds between an event's ISO 8601 ``time`` and ``now`` (pure)."""
    try:
        return now - datetime.fromisoformat(event_time).timestamp()
    except ValueError:
        return None


class Fatal(Exception):
    """Nothing can work (a wrong origin token): stop with this message."""


class Follower:
    def __init__(self, settings: IngestSettings, source: str) -> None:
        subscribe_url(source, None)  # fail early on a bad URL
        self.settings = settings
        self.source = source
        self.ctx = IngestContext.open(settings)
        self.metrics = self.ctx.metrics
        self.tracker = CursorTracker(self.ctx.state.cursor(source))
        self.received: int | None = self.tracker.durable  # where a reconnect resumes
        self.saved = self.tracker.durable
        self.queue: asyncio.Queue[tuple[Pending, str, BlobRef]] = asyncio.Queue(
            settings.queue_size)
        self.connection = Connection(self.metrics.connected)
        self.last_event_at: float | None = None
        self.quiet = QuietLog(log)
        self.stopping = asyncio.Event()
        self.fatal: Exception | None = None
        self.metrics.queue_depth.set_function(self.queue.qsize)
        self.metrics.in_flight.set_function(lambda: self.tracker.in_flight)
        self.metrics.cursor.set_function(lambda: self.tracker.durable or 0)
        self._feed: Any = None

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        """Follow until ``stop()``; then drain briefly and save the cursor. Raises
        ``Fatal`` when following cannot work."""
        log.info("following %s from cursor %s", self.source, self.tracker.durable)
        tasks = [asyncio.create_task(self._worker(), name=f"ingest-worker-{n}")
                 for n in range(self.settings.workers)]
        tasks.append(asyncio.create_task(self._flusher(), name="ingest-cursor"))
        if self.settings.status_port:
            app = status_app(self.health, self.metrics)
            tasks.append(asyncio.create_task(
                serve_status(app, self.settings.status_host, self.settings.status_port),
                name="ingest-status"))
        reader = asyncio.create_task(self._read_forever(), name="ingest-reader")
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception():
                self.fatal = self.fatal or reader.exception()
        finally:
            reader.cancel()
            stop.cancel()
            await asyncio.gather(reader, stop, return_exceptions=True)
            if self.fatal is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.queue.join(), DRAIN_SECONDS)
            self.flush()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.ctx.close()
        if self.fatal is not None:
            raise Fatal(str(self.fatal)) from self.fatal
        log.info("stopped at cursor %s", self.tracker.durable)

    def stop(self) -> None:
        self.stopping.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        lag = None if self.last_event_at is None else round(time.time() - self.last_event_at, 3)
        details = {"status": "ok" if self.connection.up else "disconnected",
                   "source": self.source, "connected": self.connection.up,
                   "cursor": self.tracker.durable, "received": self.received,
                   "secondsSinceLastEvent": lag, "queueDepth": self.queue.qsize(),
                   "eventsInFlight": self.tracker.in_flight}
        return self.connection.up and self.fatal is None, details

    def flush(self) -> None:
        """Save the durable cursor if it moved."""
        durable = self.tracker.durable
        if durable != self.saved:
            self.ctx.state.save_cursor(self.source, durable)
            self.saved = durable

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cursor_flush_interval)
            self.flush()

    # -- the connection ---------------------------------------------------------------

    async def _read_forever(self) -> None:
        await Subscription(
            self.source, lambda: subscribe_url(self.source, self.received), self.handle,
            self.settings, self.quiet, on_connected=self.connection,
            on_reconnect=self.metrics.reconnects.inc, on_error_frame=self._error_frame,
            on_too_big=self._too_big,
        ).run_forever()

    def _error_frame(self, exc: StreamError) -> None:
        if exc.error == "FutureCursor":
            # The server has no such position (reset or a different server): start from
            # its live tail.
            log.error("cursor %s is ahead of %s; following from the live tail",
                      self.received, self.source)
            self.received = None

    def _too_big(self) -> None:
        self.metrics.malformed.labels("too_big").inc()
        if self.received is not None:
            self.received += 1

    # -- events -----------------------------------------------------------------------

    async def handle(self, message: bytes | str) -> None:
        """Handle one frame: never raises for what the frame holds (only an error frame
        ends the stream, as the protocol says)."""
        try:
            event = decode(message)  # type: ignore[arg-type]
        except FrameError as exc:
            self.metrics.malformed.labels(exc.reason).inc()
            self.quiet.warning(f"frame:{exc.reason}", "skipped a malformed frame (%s) after "
                               "seq %s: %s", exc.reason, self.received, exc)
            return
        self.metrics.events.labels(_kind(event)).inc()
        if isinstance(event, Commit):
            await self._commit(event)
        elif isinstance(event, Account):
            self._anchor(event.seq)
            self._observe(event.time)
            await self._account(event)
            self._done(event.seq)
        elif isinstance(event, Identity):
            self._observe(event.time)
            self.ctx.resolver.forget(event.did)
            self._done(event.seq)
        elif isinstance(event, Info):
            self.metrics.infos.labels(event.name[:64]).inc()
            log.warning("%s says %s: %s", self.source, event.name, event.message or "")
        elif isinstance(event, ErrorFrame):
            self.metrics.error_frames.labels(event.error[:64]).inc()
            raise StreamError(event)
        elif isinstance(event, Other) and event.seq is not None:
            self._done(event.seq)

    def _observe(self, event_time: str) -> None:
        now = time.time()
        self.last_event_at = now
        lag = event_lag(event_time, now)
        if lag is not None:
            self.metrics.lag.set(lag)

    def _anchor(self, seq: int) -> None:
        """Before the first event of a start without a cursor: save the position just
        before it, so that a kill at any later moment resumes here, not at the live tail."""
        if self.tracker.durable is None and self.tracker.in_flight == 0 and seq > 0:
            self.tracker.durable = seq - 1
            self.flush()

    def _done(self, seq: int) -> None:
        self._anchor(seq)
        self.tracker.begin(seq, 0)
        self.received = seq
        self.metrics.seq.set(seq)

    async def _commit(self, commit: Commit) -> None:
        self._anchor(commit.seq)
        self._observe(commit.time)
        wanted: dict[str, BlobRef] = {}
        for op in commit.ops:
            uri = record_uri(commit.repo, op.path)
            if op.error is not None:
                self.metrics.bad_records.labels(op.error).inc()
                self.quiet.warning(f"record:{op.error}", "skipped record %s (commit %s): (%s)",
                                   uri, commit.seq, op.error)
            elif op.action == "delete":
                self.ctx.records.delete(uri)
            else:
                refs = blob_refs(op.record)
                if refs or op.action == "update":  # (a new record without blobs: nothing)
                    self.ctx.records.put(uri, commit.repo, [ref.cid for ref in refs])
                for ref in refs:
                    reason = self.ctx.ingester.screen(ref)
                    if reason is not None:
                        self.metrics.outcome(reason)
                    else:
                        wanted.setdefault(ref.cid, ref)
        entry = self.tracker.begin(commit.seq, len(wanted))
        for ref in wanted.values():
            await self.queue.put((entry, commit.repo, ref))  # waits when full: backpressure
        self.received = commit.seq
        self.metrics.seq.set(commit.seq)

    async def _account(self, event: Account) -> None:
        did = event.did
        if not event.active and event.status in TAKEDOWN_STATUSES:
            ours = self.ctx.state.is_own_takedown(did)
            self.ctx.state.note_takedown(did, event.status or "")
            already = await self.ctx.origin.take_down(did)
            if already and not ours:  # an operator's takedown: not ours to lift later
                self.ctx.state.forget_takedown(did)
            self.metrics.accounts.labels("takedown").inc()
            log.info("account %s is %s: taken down at the origin", did, event.status)
            await self._publish("takedown", did, event.status or "")
        elif event.active and self.ctx.state.is_own_takedown(did):
            await self.ctx.origin.restore(did)
            self.ctx.state.forget_takedown(did)
            self.metrics.accounts.labels("restore").inc()
            log.info("account %s is active again: restored at the origin", did)
            await self._publish("restore", did, "active")

    async def _publish(self, action: str, did: str, status: str) -> None:
        """Also put the account action on the AWS takedown feed (if configured), so edges
        that follow the feed act on it too."""
        if not self.settings.publish_feed:
            return
        from atcdn.core.feed import Feed
        from atcdn.core.settings import ControlSettings

        attempt = 0
        while True:  # the cursor must not move past an account action edges never saw
            attempt += 1
            try:
                if self._feed is None:
                    self._feed = Feed(ControlSettings())
                await asyncio.to_thread(self._feed.publish, action, did=did,
                                        reason=f"firehose #account {status}")
                return
            except Exception as exc:  # boto3 raises many types; all mean "try again"
                self.quiet.warning("feed", "cannot publish %s of %s to the takedown feed: %s",
                                   action, did, exc)
                await asyncio.sleep(backoff(attempt, 1.0, cap=30.0))

    async def _worker(self) -> None:
        while True:
            entry, did, ref = await self.queue.get()
            try:
                await self.ctx.ingester.ingest(did, ref)
            except OriginAuthError as exc:
                # Nothing can be stored: stop without moving the cursor past this blob.
                self.fatal = exc
                self.stopping.set()
                self.queue.task_done()
                return
            except Exception:  # a bug must not stop the follower; the blob is counted
                log.exception("unexpected error on blob %s of %s", ref.cid, did)
                self.metrics.outcome("internal_error")
            self.tracker.finish(entry)
            self.queue.task_done()


def _kind(event: Event) -> str:
    if isinstance(event, Other):
        return "other"
    return type(event).__name__.lower()
