"""Access logs and request IDs: one ASGI middleware, used by origin and edge alike.

Every HTTP request gets an ID: the client's ``X-Request-Id`` when it is sane (1-64 of
``A-Z a-z 0-9 . _ : -``), else a fresh one. It is echoed in the ``X-Request-Id``
response header, and every log record written while the request runs carries it, with
the method and the path (so a failure names its CID). When the request ends, one access
line: method, path, status, bytes sent, duration, cache outcome (``memory``, ``disk``,
``miss`` or ``-``; an app reports it with ``note(cache=...)``), client and ID.

Access lines skip the logging machinery (a LogRecord, its caller's frame, the handler's
RLock): one f-string, written in batches (``BatchedStreamHandler``). Formatting them in a
batch on the handler's timer thread instead measured slower on a real server
(bench/hitcost.py): the records went cold between threads.

Lines are text (logfmt-like ``key=value``) or JSON objects, one a line
(``ATCDN_LOG_FORMAT``). An exception that escapes the app is logged here, with that
context, and answered 500 if nothing was sent yet; it never reaches the server as a bare
traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any
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
    """One request, as its access line will tell it: the response's tally, and the
    request's ID, method, path and cache outcome; when it ended (``time_ns``), after how
    long (ns) and for which client."""

    __slots__ = ("id", "method", "path", "cache", "ended", "elapsed", "client")

    def __init__(self, id: str, method: str, path: str) -> None:  # noqa: A002
        self.status = self.sent = self.ended = self.elapsed = 0
        self.headers: Any = ()
        self.id, self.method, self.path = id, method, path
        self.cache = self.client = "-"


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


class AccessLog:
    """ASGI middleware: request IDs, one access line per request, logged failures."""

    def __init__(self, app: ASGIApp, settings: LogSettings | None = None) -> None:
        self.app = app
        settings = settings or LogSettings()
        self.enabled = settings.access
        self.write = configure(settings).write_line
        self.line = access_json if settings.format == "json" else access_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter_ns()
        # As sent (still percent-encoded): a %0A in a URL cannot forge a log line.
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(scope["path"])
        if scope.get("query_string"):
            path = f"{path}?{scope['query_string'].decode('latin-1')}"
        info = RequestInfo(request_id(scope["headers"]), scope["method"], path)
        echo = (b"x-request-id", info.id.encode())

        def send_logged(message: Message) -> Awaitable[None]:
            # A plain function handing back send's awaitable: no coroutine of its own
            # per message (this runs twice on every hit).
            info.see(message)
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
                info.elapsed = time.perf_counter_ns() - started
                info.ended = time.time_ns()
                client = scope.get("client")
                if client:
                    info.client = client[0]
                self.write(self.line(info))


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


def access_text(info: RequestInfo) -> str:
    """An access line as TextFormatter writes lines: ``time INFO atcdn.access k=v...``
    (the duration in integer arithmetic: float formatting is not free)."""
    centi = info.elapsed // 10_000  # hundredths of a millisecond
    return (f"{_millisecond(info.ended // 1_000_000)} INFO atcdn.access "
            f"method={info.method} path={info.path} status={info.status} bytes={info.sent} "
            f"ms={centi // 100}.{centi % 100:02d} cache={info.cache} client={info.client} "
            f"id={info.id}")


def access_json(info: RequestInfo) -> str:
    """An access line as JsonFormatter writes lines."""
    return json.dumps({"time": _millisecond(info.ended // 1_000_000), "level": "INFO",
                       "logger": "atcdn.access", "method": info.method, "path": info.path,
                       "status": info.status, "bytes": info.sent,
                       "ms": info.elapsed // 10_000 / 100, "cache": info.cache,
                       "client": info.client, "id": info.id}, separators=(",", ":"))


class BatchedStreamHandler(logging.StreamHandler):
    """A stream handler that writes in batches under load: a line is written at once when
    the last write is over ``FLUSH_SECONDS`` old (or it is a warning), else it joins the
    batch a timer writes within ``FLUSH_SECONDS``. Busy, an access line per request costs
    a formatted string, not a system call each."""

    FLUSH_SECONDS = 0.05
    FLUSH_BYTES = 64 * 1024

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.size = 0
        self.last = 0.0
        self.batch = threading.Lock()  # for pending (cheaper than the handler's RLock)
        timer = threading.Thread(target=self._tick, name="atcdn-log-flush", daemon=True)
        timer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - as logging.StreamHandler does
            self.handleError(record)
            return
        self.write_line(line, urgent=record.levelno >= logging.WARNING)

    def write_line(self, line: str, urgent: bool = False) -> None:
        with self.batch:
            self.pending.append(line)
            self.size += len(line)
            due = (urgent or self.size >= self.FLUSH_BYTES
                   or time.monotonic() - self.last >= self.FLUSH_SECONDS)
        if due:
            self.flush()

    def flush(self) -> None:
        with self.batch:
            if self.pending:
                self.pending.append("")  # the last line's terminator
                lines, self.pending, self.size = self.terminator.join(self.pending), [], 0
                self.stream.write(lines)
            self.last = time.monotonic()
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()

    def _tick(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            if self.pending:
                self.flush()


def configure(settings: LogSettings) -> BatchedStreamHandler:
    """Send the ``atcdn`` loggers to stderr in the chosen format (once per process);
    the handler, for access lines."""
    logger = logging.getLogger("atcdn")
    formatter = JsonFormatter() if settings.format == "json" else TextFormatter()
    for handler in logger.handlers:
        if getattr(handler, "atcdn", False):
            break
    else:
        handler = BatchedStreamHandler(sys.stderr)
        handler.atcdn = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(formatter)
    logger.setLevel(settings.level)
    logger.propagate = False
    return handler  # type: ignore[return-value]
