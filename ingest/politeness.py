"""Being a good citizen towards each PDS: at most N requests at once and R per second per
host, and exponential backoff between retries."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator


class TokenBucket:
    """``rate`` requests per second, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:  # waiters are served in order
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


class HostLimits:
    """Per-host concurrency and rate limits, made on first use of each host."""

    def __init__(self, concurrency: int, rate: float) -> None:
        self.concurrency = concurrency
        self.rate = rate
        self._hosts: dict[str, tuple[asyncio.Semaphore, TokenBucket]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        """Hold one of ``host``'s request slots (waiting for a slot and a rate token)."""
        limits = self._hosts.get(host)
        if limits is None:
            limits = self._hosts[host] = (asyncio.Semaphore(self.concurrency),
                                          TokenBucket(self.rate))
        semaphore, bucket = limits
        async with semaphore:
            await bucket.take()
            yield


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Delay before retry ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)``, capped, with
    +-25% jitter so many clients do not retry in step."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * random.uniform(0.75, 1.25)
