"""Access logs and request IDs: one ASGI middleware, used by origin and edge alike.

Every HTTP request gets an ID: the client's ``X-Request-Id`` when it is sane (1-64 of
``A-Z a-z 0-9 . _ : -``), else a fresh one. It is echoed in the ``X-Request-Id``
response header, and every log record written while the request runs carries it, with
the method and the path (so a failure names its CID). When the request ends, one access
line: method, path, status, bytes sent, duration, cache outcome (``memory``, ``disk``,
``miss`` or ``-``; an app reports it with ``note(cache=...)``), client and ID.

Access lines skip the logging machinery (a LogRecord, its caller's frame, the handler's
RLock): one f-string, appended to a batch the event loop writes (``AccessLines``).
Formatting them in a batch on a timer thread instead measured slower on a real server
(bench/hitcost.py): the records went cold between threads.

Lines are text (logfmt-like ``key=value``) or JSON objects, one a line
(``ATCDN_LOG_FORMAT``). An exception that escapes the app is logged here, with that
context, and answered 500 if nothing was sent yet; it never reaches the server as a bare
traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, NamedTuple
from urllib.parse import quote

from atcdn.core.errors import error_response, from_unexpected
from atcdn.core.settings import LogSettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("atcdn.request")
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_ids = random.Random(os.urandom(16))


class Tally:
    """What a response sent, seen message by message: its status and body bytes (a file
    the server sends itself, ``pathsend``, counts its Content-Length)."""

    __slots__ = ("status", "sent", "headers")

    def __init__(self) -> None:
        self.status = 0
        self.sent = 0
        self.headers: Any = ()

    def see(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":  # the most frequent first: this runs per message
            self.sent += len(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = message["status"]
            self.headers = message.get("headers") or ()
        elif kind in ("http.response.pathsend", "http.response.zerocopysend"):
            self.sent += next((int(value) for name, value in self.headers
                               if name.lower() == b"content-length"), 0)


class RequestInfo(Tally):
    """One request, as its access line will tell it: the response's tally, the request's
    ID and cache outcome, when it ended and after how long (``perf_counter_ns``), and its
    scope (method, path and client are read from it only when the line is formatted)."""

    __slots__ = ("cache", "ended", "elapsed", "id", "scope")

    def __init__(self, id: str, scope: Scope) -> None:
        self.status = self.sent = self.ended = self.elapsed = 0
        self.headers = ()
        self.id, self.scope = id, scope
        self.cache = "-"

    @property
    def method(self) -> str:
        return self.scope["method"]  # type: ignore[no-any-return]

    @property
    def path(self) -> str:
        """As sent (still percent-encoded): a %0A in a URL cannot forge a log line."""
        scope = self.scope
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"])
        if scope.get("query_string"):
            path = f"{path}?{scope['query_string'].decode('latin-1')}"
        return path

    @property
    def client(self) -> str:
        client = self.scope.get("client")
        return client[0] if client else "-"  # type: ignore[no-any-return]


_current: ContextVar[RequestInfo | None] = ContextVar("atcdn_request", default=None)


def note(*, cache: str) -> None:
    """Record the cache outcome of the request being served (for its access line)."""
    info = _current.get()
    if info is not None:
        info.cache = cache


def current_id() -> str | None:
    """The ID of the request being served, to pass on upstream (None outside one)."""
    info = _current.get()
    return info.id if info is not None else None


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id if sane, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id" and _SANE_ID.match(value):
            return value.decode()
    return _ids.getrandbits(64).to_bytes(8).hex()  # a label, not a secret: no system call


class Answer(NamedTuple):
    """A whole answer an app has ready in memory: status, headers and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class AccessLog:
    """ASGI middleware: request IDs, one access line per request, logged failures.

    ``hits``, when given, is the app's hit path (the edge's memory hits): a synchronous
    function of the scope returning an ``Answer`` ready in memory, or None. Its answers
    are sent here with the request ID and logged with cache outcome ``memory``, without
    the wrapper around ``send`` and the request context that other requests get: that
    machinery was a tenth of a hit's CPU (bench/hitcost.py). Everything else goes to
    ``app``."""

    def __init__(self, app: ASGIApp, settings: LogSettings | None = None,
                 hits: Callable[[Scope], Answer | None] | None = None) -> None:
        self.app = app
        self.hits = hits
        settings = settings or LogSettings()
        self.enabled = settings.access
        self.lines = AccessLines(configure(settings),
                                 access_json if settings.format == "json" else access_text)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = self._flushing(send)
            return await self.app(scope, receive, send)
        started = time.perf_counter_ns()
        if self.hits is not None:
            try:
                ready = self.hits(scope)
            except Exception:
                log.exception("the hit path failed; %s %s goes the long way",
                              scope["method"], scope["path"])
                ready = None
            if ready is not None:
                rid = request_id(scope["headers"])
                await send({"type": "http.response.start", "status": ready.status,
                            "headers": [*ready.headers, (b"x-request-id", rid.encode())]})
                await send({"type": "http.response.body", "body": ready.body})
                if self.enabled:
                    info = RequestInfo(rid, scope)
                    info.status, info.sent, info.cache = ready.status, len(ready.body), "memory"
                    info.ended = time.perf_counter_ns()
                    info.elapsed = info.ended - started
                    self.lines.add(info)
                return
        info = RequestInfo(request_id(scope["headers"]), scope)
        echo = (b"x-request-id", info.id.encode())
        see = info.see

        def send_logged(message: Message) -> Awaitable[None]:
            # A plain function handing back send's awaitable: no coroutine of its own
            # per message (this runs twice on every hit).
            see(message)
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*(message.get("headers") or ()), echo]}
            return send(message)

        token = _current.set(info)
        try:
            await self.app(scope, receive, send_logged)
        except Exception as exc:
            if info.status:
                log.exception("request failed after answering %s", info.status)
            else:
                answer = from_unexpected(exc)
                log.exception("request failed: answered %s", answer.status)
                await error_response(answer)(scope, receive, send_logged)
        finally:
            _current.reset(token)
            if self.enabled:
                info.ended = time.perf_counter_ns()
                info.elapsed = info.ended - started
                self.lines.add(info)

    def _flushing(self, send: Send) -> Send:
        """The lifespan's ``send``: the pending access lines are written before the
        server hears that the app shut down."""
        async def flushing_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.lines.flush()
            await send(message)
        return flushing_send


# -- formatting -----------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _millisecond(ms: int) -> str:
    """A ``time.time()`` in whole milliseconds, in ISO 8601 UTC: busy, lines share their
    millisecond, and strftime each time was a fifth of an access line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _stamp(now: float) -> str:
    return _millisecond(int(now * 1000))


class TextFormatter(logging.Formatter):
    """``time level logger message key=value...``; the request context is appended."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{_stamp(record.created)} {record.levelname} {record.name}"
        info = _current.get()
        line = f"{head} {record.getMessage()}"
        if info is not None:
            line += f" method={info.method} path={info.path} id={info.id}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message or access fields, request."""

    def format(self, record: logging.LogRecord) -> str:
        info = _current.get()
        body: dict[str, object] = {
            "time": _stamp(record.created), "level": record.levelname, "logger": record.name}
        body["message"] = record.getMessage()
        if info is not None:
            body.update(method=info.method, path=info.path, id=info.id)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, separators=(",", ":"))


# "0.00" to "9.99": formatting a duration ("{:02d}") was a third of a text line, and hits
# take under 10 ms.
_SHORT_MS = tuple(f"{centi // 100}.{centi % 100:02d}" for centi in range(1000))


def _ms(elapsed: int) -> str:
    """``elapsed`` ns as milliseconds with two decimals (integer arithmetic)."""
    centi = elapsed // 10_000  # hundredths of a millisecond
    return _SHORT_MS[centi] if centi < 1000 else f"{centi // 100}.{centi % 100:02d}"


def access_text(info: RequestInfo, clock: int) -> str:
    """An access line as TextFormatter writes lines: ``time INFO atcdn.access k=v...``
    (``clock``: ``time_ns() - perf_counter_ns()``, which dates ``info.ended``)."""
    return (f"{_millisecond((info.ended + clock) // 1_000_000)} INFO atcdn.access "
            f"method={info.method} path={info.path} status={info.status} bytes={info.sent} "
            f"ms={_ms(info.elapsed)} cache={info.cache} client={info.client} id={info.id}")


def access_json(info: RequestInfo, clock: int) -> str:
    """An access line as JsonFormatter writes lines."""
    return json.dumps({"time": _millisecond((info.ended + clock) // 1_000_000),
                       "level": "INFO", "logger": "atcdn.access", "method": info.method,
                       "path": info.path, "status": info.status, "bytes": info.sent,
                       "ms": info.elapsed // 10_000 / 100, "cache": info.cache,
                       "client": info.client, "id": info.id}, separators=(",", ":"))


class AccessLines:
    """Access lines written in batches: a request appends its ``RequestInfo``, and the
    event loop formats and writes what gathered within ``FLUSH_SECONDS`` (or
    ``MAX_LINES``) in one write, under the handler's lock so that no other record splits a
    line. No thread and no lock per line; formatting them together in one loop costs half
    of what it did one by one among the requests (bench/hitcost.py). What is pending is
    written when the server shuts down (``AccessLog`` sees the lifespan end) or the
    process exits."""

    FLUSH_SECONDS = 0.05
    MAX_LINES = 512

    def __init__(self, handler: logging.StreamHandler[Any],
                 line: Callable[[RequestInfo, int], str]) -> None:
        self.handler = handler
        self.line = line
        self.pending: list[RequestInfo] = []
        self.flusher: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def add(self, info: RequestInfo) -> None:
        pending = self.pending
        pending.append(info)
        if len(pending) >= self.MAX_LINES:
            self.flush()
        elif self.flusher is None:
            self.flusher = asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            self.flusher = None
        if not self.pending:
            return
        infos, self.pending = self.pending, []
        clock, line = time.time_ns() - time.perf_counter_ns(), self.line
        lines = [line(info, clock) for info in infos]
        lines.append("")  # the last line's terminator
        handler = self.handler
        # A log that cannot be written (closed, full) must not fail a request.
        with handler.lock or contextlib.nullcontext(), contextlib.suppress(OSError, ValueError):
            handler.stream.write("\n".join(lines))
            handler.stream.flush()


def configure(settings: LogSettings) -> logging.StreamHandler[Any]:
    """Send the ``atcdn`` loggers to stderr in the chosen format (once per process);
    the handler, for access lines."""
    logger = logging.getLogger("atcdn")
    formatter = JsonFormatter() if settings.format == "json" else TextFormatter()
    for handler in logger.handlers:
        if getattr(handler, "atcdn", False):
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.atcdn = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(formatter)
    logger.setLevel(settings.level)
    logger.propagate = False
    return handler  # type: ignore[return-value]
