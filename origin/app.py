"""The origin HTTP API: a content-addressed blob store over HTTP.

Reads are public and immutable (the URL names the bytes); writes need the bearer token
and are verified against the CID before anything is stored. ``create_app`` is the factory
the servers run (``atcdn origin serve``); it reads ``OriginSettings`` from the environment.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator

from atcdn.core import cid as cids
from atcdn.core import did as dids
from atcdn.core.feed import Event, start_follower
from atcdn.core.mime import is_active, sniff
from atcdn.core.ranges import RangeNotSatisfiable, etag_matches, parse_range
from atcdn.core.settings import OriginSettings
from atcdn.origin.index import BlobMeta, Index
from atcdn.origin.metrics import Metrics, MetricsMiddleware
from atcdn.origin.store import BlobStore, Staging, open_store
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Lifespan

IMMUTABLE = "public, max-age=31536000, immutable"
SANDBOX = "default-src 'none'; sandbox"
ERROR_NAMES = {400: "BadRequest", 401: "AuthRequired", 404: "NotFound",
               405: "MethodNotAllowed", 413: "PayloadTooLarge", 416: "RangeNotSatisfiable",
               422: "CidMismatch", 451: "TakenDown", 500: "InternalServerError",
               503: "Unavailable"}


class ApiError(Exception):
    """An error answered as ``{"error", "message"}`` with an honest status."""

    def __init__(self, status: int, message: str, error: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error or ERROR_NAMES.get(status, "Error")
        self.message = message
        self.headers = headers


def error_response(status: int, error: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status, headers=headers)


class Origin:
    """The handlers, sharing one store, index, metrics and settings."""

    def __init__(self, settings: OriginSettings, store: BlobStore, index: Index,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.index = index
        self.metrics = metrics

    # -- request parts -------------------------------------------------------------

    def require_token(self, request: Request) -> None:
        token = self.settings.token
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if not token:
            raise ApiError(401, "writes are disabled: no ATCDN_ORIGIN_TOKEN is configured",
                           headers={"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                  token.encode()):
            raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required",
                           headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def parse_cid(text: str) -> str:
        try:
            cids.parse(text)
            return text
        except cids.CIDError as exc:
            raise ApiError(400, str(exc), "InvalidCid") from None

    @staticmethod
    def parse_did(text: str | None) -> str | None:
        if text is None:
            return None
        try:
            return dids.parse(text)
        except dids.DIDError as exc:
            raise ApiError(400, f"not a DID: {text[:100]!r}: {exc}", "InvalidDid") from None

    async def receive(self, request: Request) -> Staging:
        """Stream the body into a staging file, refusing oversized bodies early."""
        limit = self.settings.max_blob_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "invalid Content-Length")
            if int(declared) > limit:
                raise ApiError(413, f"blob is {declared} bytes; the limit is {limit}",
                               "BlobTooLarge")
        staging = self.store.stage()
        try:
            async for chunk in request.stream():
                if staging.size + len(chunk) > limit:
                    raise ApiError(413, f"blob exceeds the limit of {limit} bytes",
                                   "BlobTooLarge")
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
            raise ApiError(404, f"blob {cid} is not stored", "BlobNotFound")
        head = await self.store.head(cid) if size else b""
        return self.index.record(cid, size, sniff(head))

    # -- routes --------------------------------------------------------------------

    async def get_blob(self, request: Request) -> Response:
        cid = self.parse_cid(request.path_params["cid"])
        return await self.serve(request, cid, self.parse_did(request.query_params.get("did")))

    async def get_blob_xrpc(self, request: Request) -> Response:
        cid = request.query_params.get("cid")
        if cid is None:
            raise ApiError(400, "query parameter 'cid' is required", "InvalidRequest")
        did = self.parse_did(request.query_params.get("did"))
        return await self.serve(request, self.parse_cid(cid), did)

    async def serve(self, request: Request, cid: str, did: str | None) -> Response:
        if self.index.blocked(cid, did):
            raise ApiError(451, f"blob {cid} is taken down", "TakenDown")
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
            raise ApiError(416, f"range not satisfiable for a blob of {meta.size} bytes",
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
        self.require_token(request)
        cid = self.parse_cid(request.path_params["cid"])
        did = self.parse_did(request.query_params.get("did"))
        staging = await self.receive(request)
        if not staging.verifier.matches(cid):
            actual = staging.verifier.cid
            staging.discard()
            self.metrics.verification_failures.inc()
            raise ApiError(422, f"body hashes to {actual}, not {cid}; nothing stored",
                           "CidMismatch")
        meta, created = await self.store_staged(staging, cid, did)
        return JSONResponse(self.describe(meta), 201 if created else 200)

    async def post_blob(self, request: Request) -> Response:
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

    async def subject(self, request: Request) -> str:
        self.require_token(request)
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "body must be JSON: {\"cid\": ...} or {\"did\": ...}",
                           "InvalidRequest") from None
        if not isinstance(body, dict) or len({"cid", "did"} & body.keys()) != 1:
            raise ApiError(400, "give exactly one of \"cid\" or \"did\"", "InvalidRequest")
        if "cid" in body:
            return self.parse_cid(body["cid"])
        did = body["did"]
        if not isinstance(did, str):
            raise ApiError(400, "\"did\" must be a string", "InvalidDid")
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
            raise ApiError(503, f"store or index unavailable: {exc}") from None
        return JSONResponse({"status": "ok", "store": self.settings.store})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.message, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, ERROR_NAMES.get(exc.status_code, "Error"),
                          exc.detail, exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, "InternalServerError", "unexpected error; see the server log")


def follow_takedowns(index: Index, settings: OriginSettings) -> Lifespan[Starlette]:
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
        follower = start_follower(apply, settings.data_dir / "takedown-position")
        yield
        if follower is not None:
            follower.stop()

    return lifespan


def create_app(settings: OriginSettings | None = None) -> Starlette:
    settings = settings or OriginSettings()
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
    app = Starlette(routes=routes, lifespan=follow_takedowns(origin.index, settings),
                    exception_handlers={
                        ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
