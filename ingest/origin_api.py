"""The origin, as ingest sees it: its HTTP API (``HEAD``/``PUT /blob/{cid}``,
``POST /admin/takedown`` and ``/admin/restore``), with the write token for blobs and the
admin token for account actions.

The origin is the operator's own service, so an outage is waited out (retried with
backoff, forever) rather than turned into lost work: the follower's cursor simply does not
move until the origin answers. A refusal (4xx) is final and raised as ``OriginRefused``;
a wrong token as ``OriginAuthError`` (nothing can work without it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import httpx
from atcdn.ingest.politeness import backoff

log = logging.getLogger("atcdn.ingest")

Presence = Literal["present", "missing", "taken_down"]


class OriginRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"origin answered {status}: {message}")
        self.status = status


class OriginAuthError(OriginRefused):
    """401/403: a token is missing or wrong."""


class OriginClient:
    def __init__(self, base_url: str, token: str | None, admin_token: str | None = None, *,
                 timeout: float = 60.0) -> None:
        self.base = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.admin_headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.client = httpx.AsyncClient(timeout=timeout, headers=headers, trust_env=False)
        self._down = False

    async def close(self) -> None:
        await self.client.aclose()

    async def presence(self, cid: str, did: str) -> Presence:
        """Whether the origin has ``cid`` for ``did`` (HEAD: no bytes move)."""
        res = await self._send(lambda: self.client.head(f"{self.base}/blob/{cid}",
                                                        params={"did": did}))
        if res.status_code == 200:
            return "present"
        if res.status_code == 451:
            return "taken_down"
        if res.status_code == 404:
            return "missing"
        raise self._refusal(res)

    async def put(self, cid: str, did: str,
                  body: Callable[[], AsyncIterator[bytes]], size: int) -> bool:
        """Store a blob (the origin verifies the CID again); True if it was new."""
        res = await self._send(lambda: self.client.put(
            f"{self.base}/blob/{cid}", params={"did": did, "via": "ingest"}, content=body(),
            headers={"content-length": str(size)}))
        if res.status_code in (200, 201):
            return res.status_code == 201
        raise self._refusal(res)

    async def take_down(self, did: str) -> bool:
        """Take an account down; True if the origin had it taken down already (when the
        origin says so)."""
        answer = await self.admin("takedown", {"did": did})
        if "changed" in answer:  # the origin's answer (docs/authorization.md)
            return not answer["changed"]
        return bool(answer.get("wasTakenDown", False))

    async def restore(self, did: str) -> bool:
        answer = await self.admin("restore", {"did": did})
        if "changed" in answer:
            return bool(answer["changed"])
        return bool(answer.get("wasTakenDown", False))

    async def admin(self, action: str, body: dict[str, str]) -> dict[str, Any]:
        """``POST /admin/{action}`` (takedown, restore) with the admin token; the origin's
        JSON answer."""
        res = await self._send(lambda: self.client.post(
            f"{self.base}/admin/{action}", json=body, headers=self.admin_headers))
        if res.status_code != 200:
            raise self._refusal(res)
        try:
            answer = res.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    async def _send(self, request: Callable[[], Any]) -> httpx.Response:
        """One request, retried across connection failures and 5xx answers."""
        attempt = 0
        while True:
            attempt += 1
            try:
                res = await request()
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if res.status_code < 500:
                    if self._down:
                        log.info("origin %s answers again", self.base)
                        self._down = False
                    return res
                problem = f"HTTP {res.status_code}"
            if not self._down:
                log.warning("origin %s unavailable (%s); retrying until it answers",
                            self.base, problem)
                self._down = True
            await asyncio.sleep(backoff(attempt, 0.5, cap=30.0))

    @staticmethod
    def _refusal(res: httpx.Response) -> OriginRefused:
        try:
            message = str(res.json().get("message", ""))[:300]
        except ValueError:
            message = res.text[:300]
        kind = OriginAuthError if res.status_code in (401, 403) else OriginRefused
        return kind(res.status_code, message)
