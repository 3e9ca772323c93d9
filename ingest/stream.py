"""An XRPC event stream subscription (``subscribeRepos``, ``subscribeLabels``): the URL,
and one websocket read loop reconnected forever with backoff and a ping timeout.

The caller's ``handle`` reads each frame; it raises ``StreamError`` for an error frame
(the server ends the stream after one) and whatever ``retry_on`` lists for a problem that
a reconnect should retry. Anything else ends the loop (a fatal error for the caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from atcdn.core.settings import IngestSettings
from atcdn.ingest.frames import ErrorFrame
from atcdn.ingest.politeness import backoff
from atcdn.ingest.quietlog import QuietLog
from prometheus_client import Gauge

log = logging.getLogger("atcdn.ingest")


def stream_url(source: str, method: str, cursor: int | None) -> str:
    """The URL of XRPC stream ``method`` at ``source`` (``ws(s)://host[:port]``, path
    optional), resuming after ``cursor`` when given (pure)."""
    parts = urlsplit(source)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"a stream URL is ws:// or wss://, not {source!r}")
    path = f"/xrpc/{method}"
    path = parts.path if parts.path.endswith(path) else parts.path.rstrip("/") + path
    query = urlencode({"cursor": cursor}) if cursor is not None else ""
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


MESSAGE_TOO_BIG = 1009  # the websocket close code for a frame over max_size


class StreamError(Exception):
    """The server sent an error frame (it closes the stream after one)."""

    def __init__(self, frame: ErrorFrame) -> None:
        super().__init__(f"{frame.error}: {frame.message or ''}")
        self.error = frame.error


class Connection:
    """Whether a follower is subscribed right now, for its health answer and its gauge;
    a follower passes it as ``Subscription.on_connected``."""

    def __init__(self, gauge: Gauge) -> None:
        self.up = False
        self.gauge = gauge

    def __call__(self, up: bool) -> None:
        self.up = up
        self.gauge.set(int(up))


@dataclass
class Subscription:
    source: str
    url: Callable[[], str]  # the URL to (re)connect to, with the current cursor
    handle: Callable[[bytes | str], Awaitable[None]]
    settings: IngestSettings
    quiet: QuietLog
    user_agent: str = "atcdn-ingest"
    retry_on: tuple[type[Exception], ...] = ()
    on_connected: Callable[[bool], None] = lambda up: None
    on_reconnect: Callable[[], None] = lambda: None
    on_error_frame: Callable[[StreamError], None] = lambda exc: None
    # A frame over max_frame_bytes closes the connection (1009): the follower steps its
    # cursor past it, or every reconnect would meet it again.
    on_too_big: Callable[[], None] = lambda: None

    async def run_forever(self) -> None:
        attempt = 0
        while True:
            url = self.url()
            handled = 0
            try:
                async with websockets.connect(
                        url, ping_interval=self.settings.ping_interval,
                        ping_timeout=self.settings.ping_timeout,
                        open_timeout=self.settings.connect_timeout * 2, close_timeout=5,
                        max_size=self.settings.max_frame_bytes, max_queue=4,
                        user_agent_header=self.user_agent) as ws:
                    self.on_connected(True)
                    log.info("subscribed to %s", url)
                    async for message in ws:
                        await self.handle(message)
                        handled += 1
                log.warning("%s closed the stream", self.source)
            except StreamError as exc:
                log.warning("%s sent an error frame: %s", self.source, exc)
                self.on_error_frame(exc)
            except websockets.ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == MESSAGE_TOO_BIG:
                    self.quiet.warning("too_big", "a frame from %s exceeds %s bytes; skipping "
                                       "it", self.source, self.settings.max_frame_bytes)
                    self.on_too_big()
                else:
                    log.warning("stream from %s ended: %s", self.source, exc)
            except (OSError, TimeoutError, websockets.InvalidHandshake,
                    websockets.InvalidURI) as exc:
                self.quiet.warning("connect", "cannot subscribe to %s: %s: %s", url,
                                   type(exc).__name__, exc)
            except self.retry_on as exc:
                self.quiet.warning(type(exc).__name__, "%s: %s; retrying", self.source, exc)
            finally:
                self.on_connected(False)
            attempt = 1 if handled else attempt + 1
            self.on_reconnect()
            await asyncio.sleep(backoff(attempt, 0.5, cap=self.settings.reconnect_max_backoff))
