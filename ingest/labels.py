"""``atcdn ingest labels``: follow a labeler's ``com.atproto.label.subscribeLabels`` and
obey its takedown labels at the origin.

One reader handles frames in order (label_frames.py). Each label must come from the
configured labeler (``src``) and carry a valid signature by the ``#atproto_label`` key of
its DID document (label_keys.py; the document is fetched through the SSRF-guarded client
and fetched again, at most once a minute, when a signature does not verify: the labeler
may have rotated its key). Labels that fail are counted and ignored. Labels whose value
acts (``ATCDN_INGEST_LABEL_VALUES``, default ``!takedown``) are remembered and applied
(label_actions.py); the cursor is saved after each ``#labels`` frame is fully handled, so
a kill -9 replays at most that frame (every step is idempotent), never skips one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from atcdn.core import did as dids
from atcdn.core.bodies import BodyError, read_body
from atcdn.core.errors import BlockedAddress
from atcdn.core.limits import FetchLimits
from atcdn.core.resolver import document_url
from atcdn.core.settings import IngestSettings
from atcdn.core.ssrf import public_client
from atcdn.ingest.frames import ErrorFrame, FrameError, Info
from atcdn.ingest.label_actions import LabelActions
from atcdn.ingest.label_frames import Label, Labels, decode
from atcdn.ingest.label_keys import LabelKey, LabelKeyError, label_key, verify
from atcdn.ingest.label_metrics import LabelMetrics
from atcdn.ingest.label_state import LabelState
from atcdn.ingest.origin_api import OriginAuthError, OriginClient, OriginRefused
from atcdn.ingest.quietlog import QuietLog
from atcdn.ingest.records import RecordIndex
from atcdn.ingest.status import serve_status, status_app
from atcdn.ingest.stream import Connection, StreamError, Subscription, stream_url

log = logging.getLogger("atcdn.ingest.labels")

SUBSCRIBE = "com.atproto.label.subscribeLabels"
KEY_REFRESH_EVERY = 60.0  # seconds: at most one DID document refetch per minute
MAX_DOCUMENT_BYTES = FetchLimits.did_document_bytes


def subscribe_url(source: str, cursor: int | None) -> str:
    return stream_url(source, SUBSCRIBE, cursor)


def acting_values(text: str) -> frozenset[str]:
    return frozenset(v.strip() for v in text.split(",") if v.strip())


class KeyUnavailable(Exception):
    """The labeler's key cannot be fetched now: labels cannot be checked, so wait."""


class Fatal(Exception):
    """Nothing can work (a wrong origin token): stop with this message."""


class LabelerKey:
    """The labeler's current ``#atproto_label`` key, fetched from its DID document."""

    def __init__(self, client: httpx.AsyncClient, did: str, plc_url: str) -> None:
        self.client = client
        self.did = did
        self.plc_url = plc_url
        self.key: LabelKey | None = None
        self.fetched_at = 0.0

    async def get(self, refresh: bool = False) -> LabelKey:
        """The key; ``refresh`` refetches it (if the last fetch is over a minute old)."""
        stale = time.monotonic() - self.fetched_at > KEY_REFRESH_EVERY
        if self.key is None or (refresh and stale):
            try:
                self.key = await self._fetch()
            except KeyUnavailable:
                if self.key is None:
                    raise
                log.warning("cannot refresh %s's label key; keeping the one known", self.did)
            self.fetched_at = time.monotonic()
        return self.key

    async def _fetch(self) -> LabelKey:
        url = document_url(self.did, self.plc_url)
        try:
            async with asyncio.timeout(FetchLimits.resolve_timeout):
                async with self.client.stream("GET", url) as res:
                    if res.status_code != 200:
                        raise KeyUnavailable(f"resolving {self.did}: HTTP {res.status_code}")
                    body = await read_body(res, MAX_DOCUMENT_BYTES)
        except (httpx.HTTPError, BlockedAddress, BodyError, TimeoutError) as exc:
            raise KeyUnavailable(f"resolving {self.did}: {exc!r}") from None
        try:
            return label_key(json.loads(body), self.did)
        except (ValueError, LabelKeyError) as exc:
            raise KeyUnavailable(f"{self.did}: {exc}") from None


class LabelFollower:
    def __init__(self, settings: IngestSettings, source: str, labeler_did: str) -> None:
        subscribe_url(source, None)  # fail early on a bad URL
        self.settings = settings
        self.source = source
        self.labeler = dids.parse(labeler_did)
        self.values = acting_values(settings.label_values)
        self.metrics = LabelMetrics()
        self.state = LabelState(settings.data_dir)
        self.records = RecordIndex(settings.data_dir)
        self.origin = OriginClient(settings.origin, settings.origin_token, settings.origin_admin_token)
        self.public = public_client(
            allow_private_networks=settings.allow_private_networks,
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            user_agent="atcdn-ingest-labels")
        self.key = LabelerKey(self.public, self.labeler, settings.plc_url)
        self.actions = LabelActions(settings, self.state, self.records, self.origin)
        self.cursor = self.state.cursor(source)
        self.connection = Connection(self.metrics.connected)
        self.quiet = QuietLog(log)
        self.stopping = asyncio.Event()
        self.metrics.cursor.set_function(lambda: self.cursor or 0)

    async def run(self) -> None:
        log.info("following labels of %s at %s from cursor %s (acting on %s)", self.labeler,
                 self.source, self.cursor, ", ".join(sorted(self.values)))
        tasks = [asyncio.create_task(self._sweeper(), name="labels-sweep")]
        if self.settings.labels_status_port:
            app = status_app(self.health, self.metrics)  # type: ignore[arg-type]
            tasks.append(asyncio.create_task(serve_status(
                app, self.settings.status_host, self.settings.labels_status_port)))
        reader = asyncio.create_task(self._read_forever(), name="labels-reader")
        stop = asyncio.create_task(self.stopping.wait())
        fatal: BaseException | None = None
        try:
            await asyncio.wait({reader, stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, *tasks):
                if task.done() and not task.cancelled() and task.exception():
                    fatal = task.exception()
        finally:
            for task in (reader, stop, *tasks):
                task.cancel()
            await asyncio.gather(reader, stop, *tasks, return_exceptions=True)
            await self.origin.close()
            await self.public.aclose()
            self.state.close()
            self.records.close()
        if fatal is not None:
            raise Fatal(str(fatal)) from fatal
        log.info("stopped at cursor %s", self.cursor)

    def stop(self) -> None:
        self.stopping.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        up = self.connection.up
        return up, {"status": "ok" if up else "disconnected", "source": self.source,
                    "labeler": self.labeler, "connected": up, "cursor": self.cursor,
                    "actions": dict(self.actions.counts)}

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.label_sweep_interval)
            try:
                await self.actions.sweep()
            except OriginAuthError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sweep retries next time
                self.quiet.warning("sweep", "label sweep failed: %s", exc)

    async def _read_forever(self) -> None:
        await Subscription(
            # No saved position: from the start (cursor 0), not the live tail, so labels in
            # force before this follower first ran are applied too (a labeler keeps one
            # row per label: the replay is its current state).
            self.source, lambda: subscribe_url(self.source, self.cursor or 0), self.handle,
            self.settings, self.quiet, user_agent="atcdn-ingest-labels",
            retry_on=(KeyUnavailable,), on_connected=self.connection,
            on_reconnect=self.metrics.reconnects.inc, on_error_frame=self._error_frame,
            on_too_big=self._too_big,
        ).run_forever()

    def _too_big(self) -> None:
        self.metrics.malformed.labels("too_big").inc()
        self.cursor = (self.cursor or 0) + 1

    def _error_frame(self, exc: StreamError) -> None:
        if exc.error == "FutureCursor":
            log.error("cursor %s is ahead of %s; following from the start", self.cursor,
                      self.source)
            self.cursor = 0

    async def handle(self, message: bytes | str) -> None:
        """One frame. Raises only for an error frame (the stream ends) or an unreachable
        key (the frame is not acknowledged; a reconnect replays it)."""
        try:
            event = decode(message)  # type: ignore[arg-type]
        except FrameError as exc:
            self.metrics.malformed.labels(exc.reason).inc()
            self.quiet.warning(f"frame:{exc.reason}", "skipped a malformed label frame after "
                               "seq %s: %s", self.cursor, exc)
            return
        if isinstance(event, ErrorFrame):
            self.metrics.error_frames.labels(event.error[:64]).inc()
            raise StreamError(event)
        if isinstance(event, Info):
            self.metrics.infos.labels(event.name[:64]).inc()
            log.info("%s says %s: %s", self.source, event.name, event.message or "")
            return
        await self._labels(event)

    async def _labels(self, batch: Labels) -> None:
        for reason in batch.rejected:
            self.metrics.labels.labels(reason).inc()
            self.quiet.warning(f"label:{reason}", "ignored a malformed label in #labels %s",
                               batch.seq)
        for label in batch.labels:
            outcome = await self._label(label)
            self.metrics.labels.labels(outcome).inc()
        if self.cursor is None or batch.seq > self.cursor:
            self.cursor = batch.seq
            self.state.save_cursor(self.source, batch.seq)

    async def _label(self, label: Label) -> str:
        if label.src != self.labeler:
            self.quiet.warning("foreign", "ignored a label from %s (not %s)", label.src[:100],
                               self.labeler)
            return "foreign_source"
        if not verify(await self.key.get(), label.raw):
            if not verify(await self.key.get(refresh=True), label.raw):
                self.quiet.warning("bad_signature", "ignored a label with a bad signature: "
                                   "%s %s on %s", label.val, "neg" if label.neg else "",
                                   label.uri[:200])
                return "bad_signature"
        if label.val not in self.values:
            return "other_value"
        self.state.note(label)
        try:
            await self.actions.reconcile(label.uri, datetime.now(UTC))
        except OriginAuthError:
            raise
        except OriginRefused as exc:  # final for this label; the next may work
            self.quiet.warning("refused", "origin refused to act on %s: %s", label.uri[:200],
                               exc)
            return "origin_refused"
        return "negation" if label.neg else "applied"


async def follow_labels(settings: IngestSettings) -> None:
    """Run ``atcdn ingest labels`` until SIGTERM/SIGINT."""
    import signal

    if not settings.labeler or not settings.labeler_did:
        raise ValueError("give --from ws(s)://labeler and --labeler-did did:...")
    follower = LabelFollower(settings, settings.labeler, settings.labeler_did)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, follower.stop)
    with contextlib.suppress(asyncio.CancelledError):
        await follower.run()
