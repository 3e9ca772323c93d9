"""The origin HTTP API: a content-addressed blob store over HTTP.

Reads are public and immutable (the URL names the bytes) but authorized per (DID, CID):
a blob is served under a DID only when that DID holds it and no takedown applies
(``Index.authorize``, docs/authorization.md). With ``pds_pull`` on, a read under a DID
that misses is pulled from that DID's PDS first (the shield: origin/shield.py). Writes need the write token
(``ATCDN_ORIGIN_TOKEN``) and are verified against the CID before anything is stored (by the
store itself, origin/store.py): operators' pushes are *pinned* (kept); edges' hand-offs
of blobs pulled from a PDS for a stranger go to the bounded, evictable *pulled* tier,
under per-account and per-PDS quotas. Takedown and restore need the admin token
(``ATCDN_ORIGIN_ADMIN_TOKEN``), which edges never hold. Several origins over one S3
bucket behave as one (docs/fleet-store.md): holders are shared as marker objects in the
bucket (origin/holders.py), takedowns through the AWS takedown feed they all follow. Neither token opens the other's
routes, except the takedown feed (``/admin/feed``): read-only, readable with either, so
edges deployed without AWS follow it. Errors are ``AtcdnError``s (atcdn.core.errors). ``create_app`` is the factory the
servers run (``atcdn origin serve``); it reads the settings from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator

from atcdn.core import cid as cids
from atcdn.core import did as dids
from atcdn.core.accesslog import AccessLog
from atcdn.core.errors import AtcdnError, error_handlers, invalid
from atcdn.core.feed import Action, Event, Feed, start_follower
from atcdn.core.file_response import FileResponse
from atcdn.core.gauges import Gauges
from atcdn.core.mime import is_active, sniff
from atcdn.core.quotas import TIER_HEADER
from atcdn.core.ranges import IMMUTABLE, RangeNotSatisfiable, etag_matches, parse_range
from atcdn.core.settings import ControlSettings, LogSettings, OriginSettings
from atcdn.core.staging import Staging
from atcdn.core.status_route import StatusPage
from atcdn.core.takedowns import Target
from atcdn.origin.holders import SharedHolders
from atcdn.origin.index import BlobMeta, Decision, Index, Via
from atcdn.origin.metrics import Metrics, MetricsMiddleware
from atcdn.origin.pulled import PulledTier, Quota
from atcdn.origin.shield import Shield
from atcdn.origin.store import BlobStore, S3Store, open_store
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Lifespan

log = logging.getLogger("atcdn.origin")
SANDBOX = "default-src 'none'; sandbox"
AUTH_REQUIRED = {"WWW-Authenticate": "Bearer"}
DRAIN_MAX = 1024 * 1024  # a refused body up to this size is read before the answer
# Blobs up to this size are read in one go and sent from memory: faster than a file under
# uvicorn (a thread hop per file operation) and under granian (bench/origin.py).
INLINE_MAX = 1024 * 1024
VIA: tuple[Via, ...] = ("push", "ingest")  # what ?via= may say on a PUT (hand-offs: "pds")
HOLDERS_TTL = 5.0  # seconds a read of the shared holders answers unsettled decisions


class Origin:
    """The handlers, sharing one store, index, metrics and settings."""

    def __init__(self, settings: OriginSettings, store: BlobStore, index: Index,
                 metrics: Metrics, feed: Feed | None = None) -> None:
        self.settings = settings
        self.store = store  # pinned: what operators pushed and ingest found
        self.fleet_feed = feed  # the fleet's takedown feed, when this origin follows it
        # An S3 bucket may be shared by several origins: so are the holders.
        self.holders = (SharedHolders(store.client, store.bucket, settings.s3_holders_prefix)
                        if isinstance(store, S3Store) else None)
        self.pulled = PulledTier(settings, index, metrics, self.holders)  # evictable, bounded
        self.index = index
        self.metrics = metrics
        # With pds_pull on, misses are pulled from the DID's PDS (origin/shield.py).
        self.shield = (Shield(settings, index, store, self.pulled, metrics)
                       if settings.pds_pull else None)

    # -- request parts -------------------------------------------------------------

    def require_token(self, request: Request, role: str = "write",
                      also: str | None = None) -> None:
        """The bearer must be the token of ``role`` ("write" or "admin"), or of ``also``:
        401 when it is no token of ours, 403 when it is the other role's or the role has
        none."""
        tokens = {"write": self.settings.token, "admin": self.settings.admin_token}
        variable = {"write": "ATCDN_ORIGIN_TOKEN", "admin": "ATCDN_ORIGIN_ADMIN_TOKEN"}[role]
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip().encode() if scheme.lower() == "bearer" else b""
        matches = {name for name, token in tokens.items()
                   if token and given and hmac.compare_digest(given, token.encode())}
        if role in matches or (also is not None and also in matches):
            return
        if not tokens[role]:
            raise AtcdnError(403, "Forbidden", f"{role} routes are disabled: no {variable} is"
                             " configured")
        if matches:
            raise AtcdnError(403, "Forbidden",
                             f"the {next(iter(matches))} token cannot use {role} routes")
        raise AtcdnError(401, "AuthRequired",
                         "a valid 'Authorization: Bearer <token>' header is required",
                         headers=AUTH_REQUIRED)

    @staticmethod
    def parse_cid(text: str) -> str:
        try:
            cids.parse(text)
            return text
        except cids.CIDError as exc:
            raise invalid(str(exc), "InvalidCid") from None

    @staticmethod
    def parse_did(text: str | None) -> str | None:
        if text is None:
            return None
        try:
            return dids.parse(text)
        except dids.DIDError as exc:
            raise invalid(f"not a DID: {text[:100]!r}: {exc}", "InvalidDid") from None

    def require_writable(self) -> None:
        if self.store.read_only:
            raise AtcdnError(405, "ReadOnlyStore", self.store.read_only,
                             headers={"Allow": "GET, HEAD"})

    async def receive(self, request: Request, store: BlobStore | None = None,
                      quota: Quota | None = None) -> Staging:
        """Stream the body into a staging file, refusing oversized bodies early.

        ``quota``: a body beyond what it leaves is refused with 429 before or while it
        arrives."""
        limit = self.settings.max_blob_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise invalid("invalid Content-Length", "BadRequest")
            if int(declared) > limit:
                raise AtcdnError(413, "BlobTooLarge",
                                 f"blob is {declared} bytes; the limit is {limit}")
        left = quota.left if quota else limit
        if declared is not None and quota is not None and int(declared) > left:
            if int(declared) <= DRAIN_MAX:  # read a small body, so the client hears why
                request.state.received = sum([len(chunk) async for chunk in request.stream()])
            raise quota.refusal()
        staging = (store or self.store).stage()
        try:
            async for chunk in request.stream():
                if staging.size + len(chunk) > limit:
                    raise AtcdnError(413, "BlobTooLarge",
                                     f"blob exceeds the limit of {limit} bytes")
                if quota is not None and staging.size + len(chunk) > left:
                    raise quota.refusal()
                await staging.write(chunk)
            await staging.finish()
        except BaseException:
            self.metrics.bytes_in.inc(staging.size)
            request.state.received = staging.size
            staging.discard()
            raise
        self.metrics.bytes_in.inc(staging.size)
        request.state.received = staging.size
        return staging

    async def store_staged(self, staging: Staging, cid: str, did: str | None,
                           via: Via = "push") -> tuple[BlobMeta, bool]:
        """Pin a verified blob (promoting it out of the pulled tier if it was there)."""
        before = self.index.get(cid)
        with self.metrics.verifying():
            created = await self.store.commit(staging, cid)
        if did is not None:
            await self.share_holder(cid, did, via)
        meta = self.index.record(cid, staging.size, sniff(staging.head), did, via=via)
        if before is not None and not before.pinned:
            self.pulled.store.path(cid).unlink(missing_ok=True)
        return meta, created

    async def share_holder(self, cid: str, did: str, via: Via) -> None:
        """Tell the other origins that ``did`` holds ``cid`` (before answering)."""
        if self.holders is not None:
            await self.holders.share(cid, did, via)

    async def authorize(self, cid: str, did: str | None) -> Decision:
        """``Index.authorize``, reading the shared holders through when the answer rests
        on holders this origin may not know yet (not read for ``HOLDERS_TTL``)."""
        decision = self.index.authorize(cid, did)
        if self.holders is None or self.index.settled(cid, did):
            return decision
        meta = await self.find(cid)
        if meta is not None and time.time() - meta.synced > HOLDERS_TTL:
            self.index.learn(cid, await asyncio.to_thread(self.holders.read, cid))
            decision = self.index.authorize(cid, did)
        return decision

    async def find(self, cid: str) -> BlobMeta | None:
        """The blob's metadata from the index, else from the store (a blob another origin
        over the same bucket stored, or one stored by other means); None if not stored."""
        meta = self.index.get(cid)
        if meta is not None:
            return meta
        size = await self.store.size(cid)
        if size is None:
            return None
        head = await self.store.head(cid) if size else b""
        return self.index.record(cid, size, sniff(head))

    async def lookup(self, cid: str) -> BlobMeta:
        meta = await self.find(cid)
        if meta is None:
            raise AtcdnError(404, "BlobNotFound", f"blob {cid} is not stored")
        return meta

    # -- routes --------------------------------------------------------------------

    async def get_blob(self, request: Request) -> Response:
        cid = self.parse_cid(request.path_params["cid"])
        return await self.serve(request, cid, self.parse_did(request.query_params.get("did")))

    async def get_blob_xrpc(self, request: Request) -> Response:
        cid = request.query_params.get("cid")
        if cid is None:
            raise invalid("query parameter 'cid' is required")
        did = self.parse_did(request.query_params.get("did"))
        return await self.serve(request, self.parse_cid(cid), did)

    async def serve(self, request: Request, cid: str, did: str | None) -> Response:
        decision = await self.authorize(cid, did)
        if decision != "taken-down" and self.shield is not None and did is not None:
            await self.shield.ensure(cid, did)  # a miss: pulled from the DID's PDS
            decision = self.index.authorize(cid, did)  # a takedown may have come meanwhile
        if decision == "taken-down":
            raise AtcdnError(451, "TakenDown", f"blob {cid} is taken down")
        if decision == "not-held":
            raise AtcdnError(404, "BlobNotFound", f"{did} is not known to hold blob {cid}")
        if not await self.store.holds(cid, did):  # an adopted PDS store: per account
            raise AtcdnError(404, "BlobNotFound",
                             f"blob {cid} is not held for {did or 'any account'}")
        meta = await self.lookup(cid)
        store = self.store if meta.pinned else self.pulled.store
        self.index.touch(meta)
        etag = f'"{cid}"'
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "Accept-Ranges": "bytes",
                   "X-Content-Type-Options": "nosniff", "Content-Security-Policy": SANDBOX}
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        headers["Content-Type"] = meta.mime
        if not meta.pinned:  # a stranger's: an edge charges it to the DID's share
            headers[TIER_HEADER] = "pulled"
        if is_active(meta.mime):
            headers["Content-Disposition"] = "attachment"
        try:
            byte_range = parse_range(request.headers.get("range"), meta.size)
        except RangeNotSatisfiable:
            raise AtcdnError(416, "RangeNotSatisfiable",
                             f"range not satisfiable for a blob of {meta.size} bytes",
                             headers={"Content-Range": f"bytes */{meta.size}"}) from None
        start, end, status = 0, meta.size, 200
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{meta.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD" or end == start:
            return Response(status_code=status, headers=headers)
        path = store.local_path(cid)
        if path is not None and status == 200 and "range" not in request.headers:
            if meta.size <= INLINE_MAX:  # one read in a thread, not four (stat, open, read, close)
                body = await asyncio.to_thread(path.read_bytes)
                if len(body) == meta.size:
                    return Response(body, headers=headers)
            return FileResponse(path, headers=headers, media_type=meta.mime)
        return StreamingResponse(store.read(cid, start, end), status, headers=headers)

    def parse_via(self, request: Request) -> Via:
        via = request.query_params.get("via", "push")
        if via not in VIA:
            raise invalid(f"via must be one of {', '.join(VIA)}")
        return via  # type: ignore[return-value]

    async def put_blob(self, request: Request) -> Response:
        """An operator's push (or ingest's, ``?via=ingest``): pinned."""
        self.require_writable()
        self.require_token(request)
        cid = self.parse_cid(request.path_params["cid"])
        did = self.parse_did(request.query_params.get("did"))
        via = self.parse_via(request)
        staging = await self.receive(request)
        meta, created = await self.store_staged(staging, cid, did, via)
        return JSONResponse(self.describe(meta), 201 if created else 200)

    async def post_blob(self, request: Request) -> Response:
        self.require_writable()
        self.require_token(request)
        did = self.parse_did(request.query_params.get("did"))
        via = self.parse_via(request)
        staging = await self.receive(request)
        meta, created = await self.store_staged(staging, staging.verifier.cid, did, via)
        return JSONResponse(self.describe(meta), 201 if created else 200)

    # -- the pulled tier -------------------------------------------------------------

    async def handoff(self, request: Request) -> Response:
        """``PUT /handoff/{cid}?did=D&pds=URL``: an edge hands over a blob it pulled from
        D's PDS (``pds``) for a stranger's request and verified. Proves that D holds it;
        the bytes go to the pulled tier (bounded, evictable), charged to D and the PDS."""
        self.require_token(request)
        cid = self.parse_cid(request.path_params["cid"])
        did = self.parse_did(request.query_params.get("did"))
        if did is None:
            raise invalid("a hand-off names the DID whose PDS served it (?did=)")
        meta = self.index.get(cid)
        if meta is not None:  # bytes already here: only the holder is news
            async for _ in request.stream():
                pass
            await self.pulled.hold(cid, did)
            return JSONResponse({**self.describe(meta), "tier": _tier(meta)}, 200)
        quota = self.pulled.quota(did, request.query_params.get("pds", ""))
        try:
            staging = await self.receive(request, self.pulled.store, quota)
        except AtcdnError as exc:
            if exc.status == 429:
                self.metrics.quota_refusals.inc()
            raise
        finally:  # bytes received count, stored or not
            self.pulled.charge(quota, getattr(request.state, "received", 0))
        meta, created = await self.pulled.keep(staging, cid, did)
        return JSONResponse({**self.describe(meta), "tier": _tier(meta)},
                            201 if created else 200)

    @staticmethod
    def describe(meta: BlobMeta) -> dict:
        """The answer to a write: flat fields, plus a blob ref shaped like uploadBlob's."""
        return {"cid": meta.cid, "size": meta.size, "mimeType": meta.mime,
                "blob": {"$type": "blob", "ref": {"$link": meta.cid},
                         "mimeType": meta.mime, "size": meta.size}}

    def pds_blob_changed(self, did: str, cid: str, taken_down: bool) -> None:
        """An adopted PDS moved ``did``'s copy of ``cid`` to quarantine (or back): a
        takedown (or restore) of that repo's blob, the (DID, CID) scope, at this origin;
        edges hear of it through the origin's takedown feed (docs/authorization.md)."""
        target = Target(did=did, cid=cid, reason="quarantined by the PDS")
        if taken_down:
            self.index.take_down(target)
        else:
            self.index.restore(target)

    # -- takedowns ------------------------------------------------------------------

    async def target(self, request: Request) -> Target:
        """The body of /admin/takedown and /admin/restore: ``{"did"?, "cid"?, "reason"?}``."""
        self.require_token(request, "admin")
        try:
            return Target.from_json(await request.json())
        except ValueError as exc:  # bad JSON, or a bad target
            raise invalid(str(exc)[:300] or "body must be JSON") from None

    async def publish(self, action: Action, target: Target) -> None:
        """Put a takedown or restore on the fleet's feed (when this origin follows one)
        before applying it here, so every origin applies it; unless it changes nothing
        here, which means the feed already carries it."""
        if self.fleet_feed is None or self.index.has_block(target) == (action == "takedown"):
            return
        try:
            await asyncio.to_thread(functools.partial(
                self.fleet_feed.publish, action, cid=target.cid, did=target.did,
                reason=target.reason))
        except Exception as exc:  # noqa: BLE001 - any failure: nothing applied, retry
            raise AtcdnError(503, "Unavailable", f"the takedown feed refused the {action}:"
                             f" {exc!r}"[:300] + "; nothing applied, retry") from None

    async def takedown(self, request: Request) -> Response:
        target = await self.target(request)
        await self.publish("takedown", target)
        changed, seq = self.index.take_down(target)
        return JSONResponse(target.answer("takedown", changed=changed, seq=seq))

    async def restore(self, request: Request) -> Response:
        target = await self.target(request)
        await self.publish("restore", target)
        changed, seq = self.index.restore(target)
        return JSONResponse(target.answer("restore", changed=changed, seq=seq))

    async def feed(self, request: Request) -> Response:
        """``GET /admin/feed?after=<seq>&limit=<n>``: the takedown feed, oldest first
        (the shape of ``core.feed.Event``); ``last`` is the newest seq there is. Read-only:
        the write token (edges) or the admin token."""
        self.require_token(request, "write", also="admin")
        try:
            after = int(request.query_params.get("after", "0"))
            limit = min(1000, max(1, int(request.query_params.get("limit", "1000"))))
        except ValueError:
            raise invalid("after and limit are integers") from None
        events = self.index.events(after, limit)
        return JSONResponse({"events": [event.as_dict() for event in events],
                             "last": self.index.last_seq()})

    async def health(self, request: Request) -> Response:
        try:
            await self.store.check()
            self.index.is_taken_down("health-probe")
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            raise AtcdnError(503, "Unavailable", f"store or index unavailable: {exc}") from None
        return JSONResponse({"status": "ok", "store": self.settings.store,
                             **self.store.status()})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = await asyncio.to_thread(self.metrics.render,
                                                     Gauges(self.index.readings))
        return Response(body, headers={"Content-Type": content_type})


def _tier(meta: BlobMeta) -> str:
    return "pinned" if meta.pinned else "pulled"


def follow_takedowns(index: Index, settings: OriginSettings,
                     control: ControlSettings) -> Lifespan[Starlette]:
    """Apply the AWS takedown feed to the index while the app runs (if configured); the
    events land in the origin's own feed too, so edges following the origin see them."""

    def apply(event: Event) -> None:
        target = Target(did=event.did, cid=event.cid, reason=event.reason)
        if event.action == "restore":
            index.restore(target)
        else:
            index.take_down(target)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        position = control.takedown_state_file or settings.data_dir / "takedown-position"
        if index.created:  # a new index knows no takedown: replay the feed from its start
            position.unlink(missing_ok=True)
        follower = start_follower(apply, control, position)
        if follower is not None:  # serve only once caught up with the fleet's takedowns
            try:
                await asyncio.to_thread(follower.poll)
            except Exception:
                log.exception("takedown feed unreachable at start; following it later")
        yield
        if follower is not None:
            follower.stop()

    return lifespan


def run_store(origin: Origin, status: StatusPage,
              inner: Lifespan[Starlette]) -> Lifespan[Starlette]:
    """Run the store's background work (an adopted PDS blobstore's scanner) and the status
    page's history around ``inner``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        origin.store.start(origin.pds_blob_changed)
        recording = status.start()
        try:
            async with inner(app):
                yield
        finally:
            recording.cancel()
            origin.store.stop()
            if origin.shield is not None:
                await origin.shield.aclose()

    return lifespan


def create_app(settings: OriginSettings | None = None, control: ControlSettings | None = None,
               logs: LogSettings | None = None) -> ASGIApp:
    """The app factory servers call in every worker: the one place settings are read
    from ``ATCDN_*`` (when not given) and everything is built."""
    settings = settings or OriginSettings()
    control = control or ControlSettings()
    logs = logs or LogSettings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    origin = Origin(settings, open_store(settings), Index(settings.data_dir / "index.sqlite"),
                    metrics, Feed(control) if control.takedown_follow else None)
    routes = [
        Route("/blob/{cid}", origin.get_blob, methods=["GET", "HEAD"]),
        Route("/blob/{cid}", origin.put_blob, methods=["PUT"]),
        Route("/handoff/{cid}", origin.handoff, methods=["PUT"]),
        Route("/blob", origin.post_blob, methods=["POST"]),
        Route("/xrpc/com.atproto.sync.getBlob", origin.get_blob_xrpc, methods=["GET", "HEAD"]),
        Route("/admin/takedown", origin.takedown, methods=["POST"]),
        Route("/admin/restore", origin.restore, methods=["POST"]),
        Route("/admin/feed", origin.feed, methods=["GET"]),
        Route("/health", origin.health, methods=["GET", "HEAD"]),
        Route("/metrics", origin.metrics_text, methods=["GET"]),
    ]
    status = StatusPage("origin", settings.data_dir,
                        lambda: metrics.render(Gauges(origin.index.readings))[0],
                        settings.model_dump(), interval=settings.status_interval)
    routes.append(status.route())
    lifespan = run_store(origin, status, follow_takedowns(origin.index, settings, control))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=error_handlers())
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return AccessLog(app, logs)  # outermost: it also logs what Starlette's 500 handler answered
