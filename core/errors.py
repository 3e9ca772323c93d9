"""The one error vocabulary of atcdn, and the one place errors become HTTP answers.

Everything the origin or an edge refuses or fails is an ``AtcdnError``: an honest HTTP
``status``, a short CamelCase ``error`` for machines and a ``message`` for people.
``error_response`` turns one into the JSON answer every route sends::

    {"error": "TakenDown", "message": "..."}

with ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``, ``Retry-After`` on
429 and 5xx-from-upstream answers, and ``<``, ``>``, ``&`` escaped in the body, so a path
a client sent that is quoted in a message can never be read as markup.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

RETRY_STATUSES = frozenset({429, 502, 503, 504})  # answers that say "try again later"
MAX_MESSAGE = 500  # characters of a message sent back (messages may quote a request)
# Names of the statuses the frameworks raise on their own (Starlette's 404 and 405).
STATUS_NAMES = {400: "InvalidRequest", 401: "Unauthorized", 403: "Forbidden",
                404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge",
                416: "RangeNotSatisfiable", 429: "Overloaded", 451: "TakenDown",
                500: "InternalError", 502: "UpstreamFailed", 503: "Unavailable",
                504: "UpstreamTimeout"}
_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


class AtcdnError(Exception):
    """A refusal or failure answered as JSON: ``status`` is the HTTP code, ``error`` a
    short CamelCase name, ``message`` a sentence; ``retry_after`` seconds for a 429/5xx
    (None: the server's default) and extra ``headers`` (e.g. ``WWW-Authenticate``)."""

    def __init__(self, status: int, error: str, message: str, *,
                 retry_after: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (pebble workers)
        return (_rebuild, (type(self), self.status, self.error, self.message,
                           self.retry_after, self.headers))

    def to_json(self) -> dict[str, Any]:
        """The error as stored data (e.g. a refused video's ``error.json``)."""
        return {"status": self.status, "error": self.error, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, retry_after: int | None = None) -> AtcdnError:
        return cls(int(data.get("status", 500)), str(data.get("error", "Error")),
                   str(data.get("message", "")), retry_after=retry_after)


def _rebuild(cls: type[AtcdnError], status: int, error: str, message: str,
             retry_after: int | None, headers: dict[str, str]) -> AtcdnError:
    return cls(status, error, message, retry_after=retry_after, headers=headers)


class BlockedAddress(Exception):
    """A fetch the SSRF guard refused (scheme or address)."""


# -- constructors the servers share ---------------------------------------------------


def taken_down(cid: str) -> AtcdnError:
    return AtcdnError(451, "TakenDown", f"{cid} is unavailable for legal reasons")


def overloaded(message: str = "too busy; retry later", retry_after: int | None = None
               ) -> AtcdnError:
    return AtcdnError(429, "Overloaded", message, retry_after=retry_after)


def invalid(message: str, error: str = "InvalidRequest") -> AtcdnError:
    return AtcdnError(400, error, message)


# -- the one HTTP mapping ------------------------------------------------------------


def error_body(error: str, message: str) -> bytes:
    """The JSON body; markup characters escaped, the message bounded."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return json.dumps({"error": error, "message": message}).translate(_ESCAPES).encode()


def error_response(exc: AtcdnError, *, retry_after: int = 5) -> Response:
    """The answer to ``exc``: a Starlette response (also a plain ASGI app, for raw routes)."""
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **exc.headers}
    if exc.status in RETRY_STATUSES:
        headers.setdefault("Retry-After", str(exc.retry_after or retry_after))
    return Response(error_body(exc.error, exc.message), exc.status, headers=headers,
                    media_type="application/json")


def from_unexpected(exc: BaseException) -> AtcdnError:
    """An exception nobody turned into an AtcdnError: a full disk is 507, the rest 500."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return AtcdnError(507, "InsufficientStorage", "no space left on this node's disk")
    return AtcdnError(500, "InternalError", "unexpected; see the server log")


def from_http_exception(exc: HTTPException) -> AtcdnError:
    """Starlette's own refusals (no route: 404, wrong method: 405) in our vocabulary."""
    return AtcdnError(exc.status_code, STATUS_NAMES.get(exc.status_code, "Error"),
                      str(exc.detail), headers=exc.headers)


def error_handlers(*, retry_after: int = 5) -> dict[Any, Any]:
    """Starlette ``exception_handlers`` answering every error the same way."""

    async def known(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AtcdnError)
        return error_response(exc, retry_after=retry_after)

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(from_http_exception(exc), retry_after=retry_after)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette raises it on after this answer: core/accesslog.py logs it, in context.
        return error_response(from_unexpected(exc), retry_after=retry_after)

    return {AtcdnError: known, HTTPException: http, Exception: unexpected}
