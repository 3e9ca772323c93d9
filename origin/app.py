"""The origin HTTP API: a content-addressed blob store over HTTP.

Reads are public and immutable (the URL names the bytes); writes need the write token
(``ATCDN_ORIGIN_TOKEN``) and are verified against the CID before anything is stored (by the
store itself, origin/store.py); takedown and restore need the admin token
(``ATCDN_ORIGIN_ADMIN_TOKEN``), which edges never hold. Neither token opens the other's
routes. Errors are ``AtcdnError``s (atcdn.core.errors). ``create_app`` is the factory the
servers run (``atcdn origin serve``); it reads the settings from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator

from atcdn.core import cid as cids
from atcdn.core import did as dids
from atcdn.core.accesslog import AccessLog
from atcdn.core.errors import AtcdnError, error_handlers, invalid
from atcdn.core.feed import Event, start_follower
from atcdn.core.gauges import Gauges
from atcdn.core.mime import is_active, sniff
from atcdn.core.ranges import IMMUTABLE, RangeNotSatisfiable, etag_matches, parse_range
from atcdn.core.settings import ControlSettings, LogSettings, OriginSettings
from atcdn.core.staging import Staging
from atcdn.core.status_route import StatusPage
from atcdn.origin.index import BlobMeta, Index
from atcdn.origin.metrics import Metrics, MetricsMiddleware
from atcdn.origin.store import BlobStore, open_store
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Lifespan

SANDBOX = "default-src 'none'; sandbox"
AUTH_REQUIRED = {"WWW-Authenticate": "Bearer"}


class Origin:
    """The handlers, sharing one store, index, metrics and settings."""

    def __init__(self, settings: OriginSettings, store: BlobStore, index: Index,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.metrics = metrics

    # -- request parts -------------------------------------------------------------

    def require_token(self, request: Request, role: str = "write") -> None:
        """The bearer must be the token of ``role`` ("write" or "admin"): 401 when it is
        no token of ours, 403 when it is the other role's or the role has none."""
        tokens = {"write": self.settings.token, "admin": self.settings.admin_token}
        variable = {"write": "ATCDN_ORIGIN_TOKEN", "admin": "ATCDN_ORIGIN_ADMIN_TOKEN"}[role]
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip().encode() if scheme.lower() == "bearer" else b""
        matches = {name for name, token in tokens.items()
                   if token and given and hmac.compare_digest(given, token.encode())}
        if role in matches:
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

    async def receive(self, request: Request) -> Staging:
        """Stream the body into a staging file, refusing oversized bodies early."""
        limit = self.settings.max_blob_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise invalid("invalid Content-Length", "BadRequest")
            if int(declared) > limit:
                raise AtcdnError(413, "BlobTooLarge",
                                 f"blob is {declared} bytes; the limit is {limit}")
        staging = self.store.stage()
        try:
            async for chunk in request.stream():
                if staging.size + len(chunk) > limit:
                    raise AtcdnError(413, "BlobTooLarge",
                                     f"blob exceeds the limit of {limit} bytes")
                await staging.write(chunk)
            await staging.finish()
        except BaseException:
            self.metrics.bytes_in.inc(staging.size)
            staging.discard()
            raise
        self.metrics.bytes_in.inc(staging.size)
        return staging

    async def store_staged(self, staging: Staging, cid: str, did: str | None) -> tuple[BlobMeta, bool]:
        created = await self.store.commit(staging, cid)
        meta = self.index.record(cid, staging.size, sniff(staging.head), did)
        return meta, created

    async def lookup(self, cid: str) -> BlobMeta:
        meta = self.index.get(cid)
        if meta is not None:
            return meta
        # Stored without the index knowing (e.g. a bucket filled by other means).
        size = await self.store.size(cid)
        if size is None:
            raise AtcdnError(404, "BlobNotFound", f"blob {cid} is not stored")
        head = await self.store.head(cid) if size else b""
        return self.index.record(cid, size, sniff(head))

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
        if self.index.blocked(cid, did):
            raise AtcdnError(451, "TakenDown", f"blob {cid} is taken down")
        if not await self.store.holds(cid, did):
            raise AtcdnError(404, "BlobNotFound",
                             f"blob {cid} is not held for {did or 'any account'}")
        meta = await self.lookup(cid)
        etag = f'"{cid}"'
        headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "Accept-Ranges": "bytes",
                   "X-Content-Type-Options": "nosniff", "Content-Security-Policy": SANDBOX}
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        headers["Content-Type"] = meta.mime
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
        path = self.store.local_path(cid)
        if path is not None and status == 200 and "range" not in request.headers:
            return FileResponse(path, headers=headers, media_type=meta.mime)
        return StreamingResponse(self.store.read(cid, start, end), status, headers=headers)

    async def put_blob(self, request: Request) -> Response:
        self.require_writable()
        self.require_token(request)
        cid = self.parse_cid(request.path_params["cid"])
        did = self.parse_did(request.query_params.get("did"))
        staging = await self.receive(request)
        try:
            meta, created = await self.store_staged(staging, cid, did)
        except AtcdnError as exc:
            if exc.error == "CidMismatch":
                self.metrics.verification_failures.inc()
            raise
        return JSONResponse(self.describe(meta), 201 if created else 200)

    async def post_blob(self, request: Request) -> Response:
        self.require_writable()
        self.require_token(request)
        did = self.parse_did(request.query_params.get("did"))
        staging = await self.receive(request)
        meta, created = await self.store_staged(staging, staging.verifier.cid, did)
        return JSONResponse(self.describe(meta), 201 if created else 200)

    @staticmethod
    def describe(meta: BlobMeta) -> dict:
        """The answer to a write: flat fields, plus a blob ref shaped like uploadBlob's."""
        return {"cid": meta.cid, "size": meta.size, "mimeType": meta.mime,
                "blob": {"$type": "blob", "ref": {"$link": meta.cid},
                         "mimeType": meta.mime, "size": meta.size}}

    def pds_blob_changed(self, did: str, cid: str, taken_down: bool) -> None:
        """An adopted PDS moved ``did``'s copy of ``cid`` to quarantine (or back): the one
        place where that becomes a takedown (or a restore) at this origin.

        A PDS takes down one account's copy: the (DID, CID) scope of DESIGN.md section 8,
        which this index does not have yet (with it: ``take_down(Target(did, cid))``). The
        CID scope stands in: stricter (other accounts' copies stop too), never laxer; a
        restore waits until no account's copy is quarantined. Edges hear of it through
        the takedown feed the origin serves (not on this branch: see docs/adopt.md).
        """
        if taken_down:
            self.index.take_down(cid)
        elif not self.store.quarantined(cid):
            self.index.restore(cid)

    async def subject(self, request: Request) -> str:
        self.require_token(request, "admin")
        try:
            body = await request.json()
        except ValueError:
            raise invalid("body must be JSON: {\"cid\": ...} or {\"did\": ...}") from None
        if not isinstance(body, dict) or len({"cid", "did"} & body.keys()) != 1:
            raise invalid("give exactly one of \"cid\" or \"did\"")
        if "cid" in body:
            return self.parse_cid(body["cid"])
        did = body["did"]
        if not isinstance(did, str):
            raise invalid("\"did\" must be a string", "InvalidDid")
        return self.parse_did(did)  # type: ignore[return-value]

    async def takedown(self, request: Request) -> Response:
        subject = await self.subject(request)
        was = self.index.take_down(subject)
        return JSONResponse({"subject": subject, "takenDown": True, "wasTakenDown": was})

    async def restore(self, request: Request) -> Response:
        subject = await self.subject(request)
        was = self.index.restore(subject)
        return JSONResponse({"subject": subject, "takenDown": False, "wasTakenDown": was})

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


def follow_takedowns(index: Index, settings: OriginSettings,
                     control: ControlSettings) -> Lifespan[Starlette]:
    """Apply the AWS takedown feed to the index while the app runs (if configured)."""

    def apply(event: Event) -> None:
        subject = event.cid or event.did
        assert subject is not None
        if event.action == "restore":
            index.restore(subject)
        else:
            index.take_down(subject)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        follower = start_follower(apply, control, settings.data_dir / "takedown-position")
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
                    metrics)
    routes = [
        Route("/blob/{cid}", origin.get_blob, methods=["GET", "HEAD"]),
        Route("/blob/{cid}", origin.put_blob, methods=["PUT"]),
        Route("/blob", origin.post_blob, methods=["POST"]),
        Route("/xrpc/com.atproto.sync.getBlob", origin.get_blob_xrpc, methods=["GET", "HEAD"]),
        Route("/admin/takedown", origin.takedown, methods=["POST"]),
        Route("/admin/restore", origin.restore, methods=["POST"]),
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
