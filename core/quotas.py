"""Quotas of strangers, as pure arithmetic: bytes per account and per PDS in a window,
and shares of a bounded tier evicted oldest first.

The origin's pulled tier (origin/pulled.py, origin/index.py) and an edge's cache
(edge/shares.py) keep their own counts in SQLite; what a count means, when a window
ends, which quota binds and what to evict is decided here, once. Subjects are named
``did:...`` for an account and ``pds:<scheme>://<host>[:port]`` for a PDS (``subject_of``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from atcdn.core.errors import AtcdnError

# An origin's answer header naming a blob of its evictable pulled tier ("pulled"): a
# stranger's, which an edge keeps within that stranger's share (edge/shares.py).
TIER_HEADER = "x-atcdn-tier"


def subject_of(pds_url: str) -> str:
    """A PDS URL reduced to what a quota is kept for: ``pds:scheme://host[:port]``."""
    parts = urlsplit(pds_url.strip().lower())
    site = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "unknown"
    return f"pds:{site}"


@dataclass(frozen=True)
class Quotas:
    """``per_did`` bytes per account and ``per_pds`` per PDS, every ``window`` seconds."""

    per_did: int
    per_pds: int
    window: int

    def window_of(self, now: float) -> int:
        """The number of the window ``now`` (unix seconds) falls in."""
        return int(now) // self.window

    def retry_after(self, now: float) -> int:
        """Seconds until the next window."""
        return max(1, self.window - int(now) % self.window)

    def left(self, did: str, pds: str, used: Callable[[str], int]) -> tuple[int, str]:
        """(bytes left, whose quota binds) for ``did`` fetching from ``pds`` (a subject),
        given ``used(subject)``, the bytes counted in this window."""
        bytes_left, whose = min((self.per_did - used(did), did), (self.per_pds - used(pds), pds))
        return max(0, bytes_left), whose

    def exceeded(self, whose: str, now: float, what: str) -> AtcdnError:
        """The 429 of a used-up quota, with Retry-After at the next window."""
        return AtcdnError(429, "QuotaExceeded",
                          f"the {what} quota of {whose} is used up for this window",
                          headers={"Retry-After": str(self.retry_after(now))})


def over_budget(entries: Iterable[tuple[str, int]], total: int, budget: int) -> list[str]:
    """Which entries (key, size), oldest first, to drop so that ``total`` fits ``budget``."""
    victims: list[str] = []
    for key, size in entries:
        if total <= budget:
            break
        victims.append(key)
        total -= size
    return victims


def over_shares(entries: Sequence[tuple[str, int, tuple[str, ...]]], held: Mapping[str, int],
                shares: Mapping[str, int]) -> list[str]:
    """Which entries (key, size, subjects), oldest first, to drop so that every subject
    of ``shares`` holds at most its share. ``held`` is what each subject holds in all
    (entries that may not be dropped included); a subject past its share loses only its
    *own* entries, so one never pays for another's."""
    held = dict(held)
    victims: list[str] = []
    for subject, share in shares.items():
        own = [(key, size) for key, size, subjects in entries
               if subject in subjects and key not in victims]
        dropped = over_budget(own, held.get(subject, 0), share)
        for key, size, subjects in entries:
            if key in dropped:
                for other in subjects:
                    held[other] = held.get(other, 0) - size
        victims += dropped
    return victims
