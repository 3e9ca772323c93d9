"""The one error type of the edge's request path, answered as JSON with an honest code."""

from __future__ import annotations


class EdgeError(Exception):
    """``status`` is the HTTP code; ``error`` a short CamelCase name for machines."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class BlockedAddress(Exception):
    """A fetch the SSRF guard refused (scheme or address)."""
