"""The edge's operator routes: metrics, purge and takedown (and the feed's events).

``POST /admin/purge``, ``POST /admin/takedown`` and ``POST /admin/restore`` need the purge
token; takedown and restore take and answer the origin's shape (core/takedowns.py,
docs/authorization.md). Purge and takedown drop every
cached copy on this node (edge/takedown.py), stop work in flight for it (edge/gate.py,
edge/transcodes.py) and answer only once every worker of the node will have seen it.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from atcdn.core.errors import AtcdnError, invalid
from atcdn.core.feed import Event
from atcdn.core.gauges import Gauges
from atcdn.core.settings import EdgeSettings
from atcdn.core.takedowns import Target
from atcdn.edge import transcodes, urls
from atcdn.edge.cache import DiskTier
from atcdn.edge.gate import Purges
from atcdn.edge.metrics import Metrics
from atcdn.edge.takedown import SETTLE, Node, Takedowns, purge_disk, purge_victims
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class Admin:
    def __init__(self, settings: EdgeSettings, node: Node, disk: DiskTier,
                 takedowns: Takedowns, purges: Purges, metrics: Metrics) -> None:
        self.settings = settings
        self.node = node
        self.disk = disk
        self.takedowns = takedowns
        self.purges = purges
        self.metrics = metrics

    def routes(self) -> list[Route]:
        return [
            Route("/metrics", self.metrics_page, methods=["GET"]),
            Route("/admin/purge", self.purge, methods=["POST"]),
            Route("/admin/takedown", self.takedown, methods=["POST"]),
            Route("/admin/restore", self.restore, methods=["POST"]),
        ]

    async def metrics_page(self, request: Request) -> Response:
        gauges = Gauges(self.disk.readings)
        body = await asyncio.to_thread(self.metrics.render, gauges)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def purge(self, request: Request) -> Response:
        """Body: ``{"paths": [...]}`` and/or ``{"did": ..., "cid": ...}``."""
        body = await self._body(request)
        targets: list[tuple[str | None, str | None]] = []
        try:
            for path in body.get("paths") or []:
                did, cid = urls.parse_purge_path(str(path))
                targets.append((None, cid) if cid else (did, None))
        except urls.UrlError as exc:
            raise invalid(str(exc)) from None
        if body.get("did") or body.get("cid"):
            targets.append(_did_cid(body))
        removed = await asyncio.to_thread(self.apply_purge, targets)
        return JSONResponse({"purged": removed, "targets": len(targets)})

    async def takedown(self, request: Request) -> Response:
        """Body: ``{"did"?, "cid"?, "reason"?}`` (both: one repo's blob); 451 from now on."""
        return await self._takedown(request, restore=False)

    async def restore(self, request: Request) -> Response:
        """Body: ``{"did"?, "cid"?, "reason"?}``: lifts a takedown of exactly that scope."""
        return await self._takedown(request, restore=True)

    async def _takedown(self, request: Request, *, restore: bool) -> Response:
        try:
            target = Target.from_json(await self._body(request))
        except ValueError as exc:
            raise invalid(str(exc)[:300]) from None
        answer = await asyncio.to_thread(self.apply_takedown, target, restore)
        return JSONResponse(answer)

    def apply(self, event: Event) -> None:
        """A takedown-feed event (the follower's thread): as ``POST /admin/takedown``."""
        self.apply_takedown(Target(did=event.did, cid=event.cid, reason=event.reason),
                            event.action == "restore")

    def apply_takedown(self, target: Target, restore: bool) -> dict[str, Any]:
        did, cid = target.did, target.cid
        if restore:
            changed = self.takedowns.remove(did=did, cid=cid)
            self._settle(set())
            return target.answer("restore", changed=changed, purged=0)
        changed = self.takedowns.add(did=did, cid=cid)
        return target.answer("takedown", changed=changed, purged=self.apply_purge([(did, cid)]))

    def apply_purge(self, targets: list[tuple[str | None, str | None]]) -> int:
        removed, victims = 0, set()
        for did, cid in targets:
            victims |= purge_victims(self.disk, did=did, cid=cid)
            removed += purge_disk(self.disk, self.node.video_dir, self.purges, did=did, cid=cid)
        self._settle(victims)
        return removed

    def _settle(self, victims: set[str]) -> None:
        """Tell every worker, wait until they all will have looked and until no transcode
        of a victim runs any more."""
        self.node.generation.bump()
        time.sleep(SETTLE)
        transcodes.settle(self.node.video_dir, victims)

    async def _body(self, request: Request) -> dict[str, Any]:
        token = self.settings.purge_token
        if not token:
            raise AtcdnError(403, "Forbidden", "set ATCDN_EDGE_PURGE_TOKEN to enable")
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {token}".encode()):
            raise AtcdnError(401, "Unauthorized", "bad or missing bearer token")
        try:
            body = await request.json()
        except ValueError:
            raise invalid("body must be JSON") from None
        if not isinstance(body, dict):
            raise invalid("body must be a JSON object")
        return body


def _did_cid(body: dict[str, Any]) -> tuple[str | None, str | None]:
    try:
        did = urls.parse_did(str(body["did"])) if body.get("did") else None
        cid = urls.parse_cid(str(body["cid"])) if body.get("cid") else None
    except urls.UrlError as exc:
        raise invalid(str(exc)) from None
    return did, cid
