"""The one error vocabulary: AtcdnError and its JSON answer (pure, no servers)."""

from __future__ import annotations

import json
import pickle

from atcdn.core.errors import AtcdnError, error_body, error_response, overloaded


def test_body_escapes_markup_and_bounds_the_message() -> None:
    body = error_body("InvalidRequest", "bad path '/<script>&x'" + "a" * 2000)
    assert b"<" not in body and b">" not in body and b"&" not in body
    decoded = json.loads(body)
    assert decoded["error"] == "InvalidRequest"
    assert decoded["message"].startswith("bad path '/<script>&x'")
    assert len(decoded["message"]) < 600


def test_response_headers() -> None:
    refused = error_response(AtcdnError(451, "TakenDown", "gone"))
    assert refused.status_code == 451
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert refused.headers["cache-control"] == "no-store"
    assert refused.headers["content-type"] == "application/json"
    assert "retry-after" not in refused.headers
    assert error_response(AtcdnError(502, "UpstreamFailed", "x"),
                          retry_after=7).headers["retry-after"] == "7"
    assert error_response(overloaded(retry_after=3)).headers["retry-after"] == "3"
    auth = error_response(AtcdnError(401, "AuthRequired", "x",
                                     headers={"WWW-Authenticate": "Bearer"}))
    assert auth.headers["www-authenticate"] == "Bearer"


def test_errors_cross_process_boundaries_whole() -> None:
    class Sub(AtcdnError):
        pass

    again = pickle.loads(pickle.dumps(AtcdnError(429, "Overloaded", "busy", retry_after=4)))
    assert (again.status, again.error, again.message, again.retry_after) == (
        429, "Overloaded", "busy", 4)
    assert AtcdnError.from_json(again.to_json()).to_json() == again.to_json()


def test_a_full_disk_is_507_and_anything_else_500() -> None:
    import errno

    from atcdn.core.errors import from_unexpected

    full = from_unexpected(OSError(errno.ENOSPC, "No space left on device"))
    assert (full.status, full.error) == (507, "InsufficientStorage")
    other = from_unexpected(ValueError("/secret/path"))
    assert (other.status, other.error) == (500, "InternalError")
    assert "secret" not in other.message  # nothing of the exception is sent
