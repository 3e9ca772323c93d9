"""Typed settings, the one home of configuration.

Every field is read from an ``ATCDN_*`` environment variable; the CLI turns its flags
into those variables before a server starts, so every worker process of a server sees
the same configuration. docs/configuration.md lists every variable. Each field's
description is also its flag's ``--help`` line (cli/flags.py), so the text, the default
and the variable have one home. Byte sizes accept suffixes (``10G``, ``512M``,
``1.5GiB``: core/sizes.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from atcdn.core.limits import FetchLimits, ImageLimits, VideoLimits, WorkerLimits
from atcdn.core.sizes import parse_size
from pydantic import AliasChoices, BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# uvicorn (with uvloop and httptools) is the default: it beat granian on every cache hit
# in issue 8's side-by-side run (docs/benchmarks.md). granian stays selectable.
Server = Literal["uvicorn", "granian"]
Size = Annotated[int, BeforeValidator(parse_size)]
"""A byte count that also accepts ``10G``, ``512M``, ``1.5GiB``, ``300MB``."""


def check_base_url(value: str) -> str:
    """An http(s) URL with a host (``127.0.0.1:8101`` alone is refused, not guessed)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL; write it with its scheme, "
                         f"e.g. http://{value.split('://')[-1]}")
    return value


class OriginSettings(BaseSettings):
    """The origin: content-addressed blob storage. Variables ``ATCDN_ORIGIN_*``."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_ORIGIN_", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8100, description="TCP port to listen on")
    workers: int = Field(default=1, description="server worker processes")
    server: Server = Field(default="uvicorn", description="HTTP server: uvicorn or granian")
    data_dir: Path = Field(
        default=Path("atcdn-data/origin"),
        description="blobs (fs store), index, metrics and feed position")
    token: str | None = Field(
        default=None, description="write token: bearer of PUT/POST /blob (edge hand-offs,"
                                  " pushes); cannot take down; unset: the origin is read-only")
    admin_token: str | None = Field(
        default=None, description="admin token: bearer of /admin/takedown and /admin/restore;"
                                  " never given to edges; unset: those routes answer 403")
    max_blob_bytes: Size = Field(default=300 * 1024 * 1024, description="largest blob accepted")
    status_interval: float = Field(
        default=10.0, gt=0, description="seconds between points of the /status page's history")
    store: Literal["fs", "s3", "pds-disk", "pds-s3"] = Field(
        default="fs",
        description="where blobs live: fs (data_dir) or s3 (a bucket); pds-disk / pds-s3 serve"
                    " a PDS's own blobstore read-only (docs/adopt.md)")
    pds_blobstore: Path | None = Field(
        default=None, description="pds-disk: the PDS's PDS_BLOBSTORE_DISK_LOCATION (<did>/<cid>)")
    pds_scan_interval: float = Field(
        default=10.0, gt=0, le=30.0,
        description="pds-*: seconds between looks at quarantine/ (bounds takedown delay)")
    pds_rescan_interval: float = Field(
        default=300.0, gt=0, description="pds-*: seconds between full listings of the blobs")
    s3_endpoint: str | None = Field(
        default=None, description="S3 endpoint URL (SeaweedFS, MinIO); unset: AWS")
    s3_bucket: str = Field(default="atcdn", description="S3 bucket of the blobs")
    s3_region: str = Field(default="us-east-1", description="S3 region")
    s3_access_key: str | None = Field(default=None, description="S3 access key id")
    s3_secret_key: str | None = Field(default=None, description="S3 secret access key")
    s3_path_style: bool = Field(default=True, description="path-style S3 addressing")
    s3_prefix: str = Field(default="blobs/", description="key prefix of blobs in the bucket")
    s3_holders_prefix: str = Field(
        default="holders/", description="key prefix of the holder markers every origin over"
                                        " the bucket shares (docs/fleet-store.md)")
    # The pulled tier (docs/authorization.md): blobs edges hand over after a stranger's
    # request pulled them from a PDS. Bounded, evictable, always on local disk.
    pulled_max_bytes: Size = Field(
        default=10 * 1024**3, description="budget of the pulled tier; least recently used out")
    pulled_quota_did: Size = Field(
        default=512 * 1024**2,
        description="bytes an account's hand-offs may bring in per quota window (429 beyond)")
    pulled_quota_pds: Size = Field(
        default=4 * 1024**3,
        description="bytes one PDS's hand-offs may bring in per quota window (429 beyond)")
    pulled_quota_window: int = Field(default=3600, gt=0, description="quota window, seconds")
    # The shield (origin/shield.py, docs/shield.md): on a miss, the origin pulls the blob
    # from the author's PDS itself, once for all its workers, into the pulled tier.
    pds_pull: bool = Field(
        default=False,
        description="on a miss under ?did=, pull the blob from that DID's PDS (verified, once"
                    " for all workers, into the pulled tier): edges then need no PDS access")
    plc_url: str = Field(
        default="https://plc.directory",
        validation_alias=AliasChoices("ATCDN_PLC_URL", "plc_url"),
        description="PLC directory that resolves did:plc for PDS pulls")
    allow_private_networks: bool = Field(
        default=False,
        validation_alias=AliasChoices("ATCDN_ALLOW_PRIVATE_NETWORKS", "allow_private_networks"),
        description="let DID documents and PDSes point at private addresses (tests, LANs)")
    pull_timeout: float = Field(
        default=FetchLimits.timeout, gt=0, description="seconds for one getBlob from a PDS")
    pull_deadline: float = Field(
        default=90.0, gt=0,
        description="seconds a request waits for a pull, its own or another worker's (504)")
    pull_temp_size: Size = Field(
        default=FetchLimits.temp_bytes,
        description="bytes all pulls and hand-offs in progress may hold in"
                    " {data_dir}/pulled/tmp; one that would pass it is refused with 503")

    @field_validator("plc_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)


class EdgeSettings(BaseSettings):
    """An edge cache node. Variables ``ATCDN_EDGE_*``, plus the three shared ones below."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_EDGE_", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8200, description="TCP port to listen on")
    workers: int = Field(default=2, description="server worker processes")
    server: Server = Field(default="uvicorn", description="HTTP server: uvicorn or granian")
    origin: str = Field(
        default="http://127.0.0.1:8100",
        description="origin base URL, with its scheme; several (comma-separated, or the flag"
                    " repeated): each CID has a home origin among them (docs/origins.md)")
    cache_dir: Path = Field(
        default=Path("atcdn-data/edge"),
        description="disk cache, takedown list, transcodes, metrics")
    cache_size: Size = Field(default=10 * 1024**3, description="disk cache budget")
    plc_url: str = Field(
        default="https://plc.directory",
        validation_alias=AliasChoices("ATCDN_PLC_URL", "plc_url"),
        description="PLC directory that resolves did:plc for the PDS fallback",
    )
    pds_fallback: bool = Field(
        default=True,
        validation_alias=AliasChoices("ATCDN_PDS_FALLBACK", "pds_fallback"),
        description="fetch blobs the origin lacks from the account's PDS",
    )
    allow_private_networks: bool = Field(
        default=False,
        validation_alias=AliasChoices("ATCDN_ALLOW_PRIVATE_NETWORKS", "allow_private_networks"),
        description="let DID documents and PDSes point at private addresses (tests, LANs)",
    )
    # Edge server (edge/app.py, fetch.py, cache.py).
    origin_token: str | None = Field(
        default=None, description="bearer token to hand PDS-fetched blobs to the origin")
    purge_token: str | None = Field(
        default=None,
        description="bearer token for POST /admin/purge, /admin/takedown and /admin/restore")
    takedown_source: Literal["origin", "aws", "none"] | None = Field(
        default=None,
        description="takedown feed to follow: the origin's own (GET /admin/feed, with the"
                    " origin token), the AWS one, or none; unset: aws when"
                    " ATCDN_TAKEDOWN_FOLLOW is on, else origin")
    enable_avif: bool = Field(default=False, description="offer AVIF to Accept: image/avif")
    memory_cache_size: Size = Field(
        default=256 * 1024**2, description="in-memory tier budget per worker")
    memory_max_item: Size = Field(
        default=1024**2, description="larger entries live only on disk, served as files")
    memory_file_max: Size = Field(
        default=8 * 1024**2,
        description="disk-file entries up to this size are also held whole in each worker's"
                    " memory tier (granian sends a body faster than a file); 0: send files")
    # Fetches (edge/fetch.py, the SSRF guard). Every limit's default is in core/limits.py.
    max_fetch_bytes: Size = Field(
        default=FetchLimits.max_bytes, description="largest blob fetched from origin or PDS")
    fetch_connect_timeout: float = Field(
        default=FetchLimits.connect_timeout, description="seconds to connect upstream")
    fetch_timeout: float = Field(
        default=FetchLimits.timeout, description="seconds for a whole upstream fetch")
    fetch_temp_size: Size = Field(
        default=FetchLimits.temp_bytes,
        description="bytes all fetches in progress on this node may hold in {cache_dir}/tmp;"
                    " a fetch that would pass it is refused with 503 (on top of cache_size)")
    resolve_timeout: float = Field(
        default=FetchLimits.resolve_timeout,
        description="one deadline for a whole DID resolution (redirects, a slow body)")
    fetch_retries: int = Field(default=2, description="retries of a failed upstream fetch")
    max_redirects: int = Field(
        default=FetchLimits.max_redirects, description="redirects followed from a PDS")
    retry_after: int = Field(default=5, description="Retry-After seconds on 502/503/504")
    status_interval: float = Field(
        default=10.0, gt=0, description="seconds between points of the /status page's history")
    presets: str | None = Field(
        default=None, description="JSON object of extra/overriding image presets")
    # Per-stranger quotas (edge/shares.py): blobs the origin does not hold as pinned.
    quota_did: Size = Field(
        default=512 * 1024**2,
        description="bytes one account's blobs may bring into this edge per quota window"
                    " (429 beyond); the origin's pinned blobs are not counted")
    quota_pds: Size = Field(
        default=4 * 1024**3,
        description="bytes one PDS's blobs may bring into this edge per quota window (429 beyond)")
    quota_window: int = Field(default=3600, gt=0, description="quota window, seconds")
    share_did: float = Field(
        default=0.05, gt=0, le=1,
        description="part of the disk cache, and of the videos' space, one account's blobs"
                    " may hold; past it, its own oldest are evicted")
    share_pds: float = Field(
        default=0.25, gt=0, le=1,
        description="part of the disk cache, and of the videos' space, one PDS's blobs may"
                    " hold; past it, its own oldest are evicted")
    max_pending_misses: int = Field(
        default=512, description="cache misses in progress per worker before answering 429")
    health_probe_interval: float = Field(
        default=5.0, gt=0,
        description="seconds a readiness probe of the origin is reused by /health")
    # Several origins (edge/origins.py, docs/origins.md): health checks and failover.
    origin_check_interval: float = Field(
        default=1.0, gt=0,
        description="with several origins: seconds between health checks (GET /health) of each")
    origin_check_timeout: float = Field(
        default=1.0, gt=0, description="seconds an origin's /health may take before it fails")
    origin_down_after: int = Field(
        default=2, ge=1,
        description="failed checks or connections in a row that mark an origin down (its CIDs"
                    " go to the next origin); one passed check marks it up again")
    # Image transforms (edge/image.py, edge/transform.py): source limits and worker pool.
    image_max_source_bytes: Size = Field(
        default=ImageLimits.max_source_bytes, description="largest image source transformed")
    image_max_source_pixels: int = Field(
        default=ImageLimits.max_source_pixels, description="most pixels of an image source")
    image_max_frames: int = Field(
        default=ImageLimits.max_frames, description="most frames kept animated")
    image_max_animation_pixels: int = Field(
        default=ImageLimits.max_animation_pixels,
        description="most pixels summed over an animation's frames")
    transform_workers: int = Field(
        default=WorkerLimits.workers, description="image transform processes")
    transform_timeout: float = Field(
        default=WorkerLimits.timeout, description="seconds per image transform")
    transform_memory_mb: int = Field(
        default=WorkerLimits.memory_mb, description="memory limit of a transform process, MiB")
    decoder_user: str = Field(
        default="nobody",
        description="user the image workers and transcoders switch to when the edge runs as"
                    " root and that user can read the installed code ('' stays root); they also"
                    " leave the network where the kernel lets them")
    transform_queue_size: Size = Field(
        default=WorkerLimits.queue_bytes,
        description="source bytes of transforms queued or running per worker process;"
                    " beyond it 503 Busy")

    # Video (/watch): transcodes to HLS run in child processes, at most
    # video_max_concurrent per node, video_queue_length more waiting per worker.
    video_max_bytes: Size = Field(
        default=VideoLimits.max_bytes, description="largest video source")
    video_max_seconds: float = Field(
        default=VideoLimits.max_seconds, description="longest video, seconds")
    video_max_pixels: int = Field(
        default=VideoLimits.max_pixels, description="most pixels per video frame")
    video_timeout: float = Field(default=VideoLimits.timeout, description="seconds per transcode")
    video_memory_bytes: Size = Field(
        default=VideoLimits.memory_bytes, description="memory limit of a transcode process")
    video_max_concurrent: int = Field(default=1, description="transcodes at once per node")
    video_queue_length: int = Field(default=8, description="transcodes waiting per worker")
    video_share: float = Field(
        default=0.2, gt=0, lt=1,
        description="part of cache_size for /watch (transcodes, their sources, refusals);"
                    " the disk tier gets the rest; least recently used videos go first")
    video_threads: int = Field(
        default=VideoLimits.threads, description="encoder threads per transcode; 0: auto")

    @field_validator("origin")
    @classmethod
    def _base_urls(cls, value: str) -> str:
        urls = [url.strip() for url in value.split(",")]
        if not all(urls):
            raise ValueError(f"{value!r} has an empty origin URL")
        return ",".join(check_base_url(url) for url in urls)

    @field_validator("plc_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @property
    def origins(self) -> list[str]:
        """The origin base URLs (no trailing slash, duplicates dropped), in the order given."""
        return list(dict.fromkeys(url.rstrip("/") for url in self.origin.split(",")))


class LogSettings(BaseSettings):
    """Logs of origin and edge servers (core/accesslog.py). Variables ``ATCDN_LOG_*``."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_LOG_")

    format: Literal["text", "json"] = Field(
        default="text", description="log line format: text, or json (one object a line)")
    access: bool = Field(default=True, description="log one line per request")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="least severe level logged")


class UpSettings(BaseSettings):
    """``atcdn up``: the whole CDN on localhost. Variables ``ATCDN_UP_*``."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_UP_")

    data_dir: Path = Field(
        default=Path("atcdn-data"),
        description="origin data, edge cache, logs and the write token")
    origin_port: int = Field(default=8100, description="origin port on 127.0.0.1")
    edge_port: int = Field(default=8200, description="edge port on 127.0.0.1")


class PushSettings(BaseSettings):
    """``atcdn push``: store files in an origin. Variables ``ATCDN_PUSH_*``."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_PUSH_", populate_by_name=True)

    origin: str = Field(
        default="http://127.0.0.1:8100", description="origin base URL, with its scheme")
    token: str | None = Field(
        default=None, validation_alias=AliasChoices("ATCDN_ORIGIN_TOKEN", "token"),
        description="the origin's write token")
    token_file: Path | None = Field(
        default=None, description="read the token from this file (atcdn up writes one)")
    did: str | None = Field(default=None, description="DID that references the pushed blobs")
    concurrency: int = Field(default=4, ge=1, le=64, description="uploads at once")

    @field_validator("origin")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)


class ControlSettings(BaseSettings):
    """The AWS control plane (Route53 edges, the takedown feed). Variables ``ATCDN_*``.

    AWS credentials are not settings: boto3 reads them from its usual places
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, an instance profile, ~/.aws).
    """

    model_config = SettingsConfigDict(env_prefix="ATCDN_")

    aws_endpoint_url: str | None = Field(
        default=None, description="one endpoint for every AWS API (moto_server, LocalStack)")
    route53_endpoint_url: str | None = Field(
        default=None, description="Route53 endpoint; overrides aws_endpoint_url")
    dynamodb_endpoint_url: str | None = Field(
        default=None, description="DynamoDB endpoint; overrides aws_endpoint_url")
    aws_region: str = Field(default="us-east-1", description="AWS region of the control plane")
    hosted_zone_id: str | None = Field(default=None, description="Route53 zone of the edges")
    edge_record_name: str = Field(
        default="cdn.example.com", description="DNS name every edge answers under")
    edge_record_ttl: int = Field(default=60, description="TTL of the edge DNS records, seconds")
    health_check_path: str = Field(
        default="/health", description="path Route53 health checks ask (edge readiness)")
    health_check_port: int = Field(default=443, description="port Route53 health checks use")
    health_check_protocol: Literal["HTTP", "HTTPS"] = Field(
        default="HTTPS", description="protocol of Route53 health checks")
    takedown_follow: bool = Field(
        default=False, description="origin/edge: follow the takedown feed (needs AWS access)")
    takedown_table: str = Field(default="atcdn-takedowns", description="DynamoDB feed table")
    takedown_poll_interval: float = Field(
        default=10.0, gt=0, le=30.0,
        description="seconds between feed polls: the bound on takedown delay")
    takedown_state_file: Path | None = Field(
        default=None, description="where a follower keeps its feed position")


class IngestSettings(BaseSettings):
    """The network follower and backfiller (``atcdn ingest``). Variables ``ATCDN_INGEST_*``,
    plus ``ATCDN_ORIGIN_TOKEN`` and ``ATCDN_ORIGIN_ADMIN_TOKEN`` (the origin's write and
    admin tokens), ``ATCDN_PLC_URL`` and
    ``ATCDN_ALLOW_PRIVATE_NETWORKS`` shared with the edge."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_INGEST_", populate_by_name=True)

    firehose: str | None = Field(
        default=None, description="ws(s):// URL of a relay or PDS (subscribeRepos)")
    origin: str = Field(default="http://127.0.0.1:8100", description="origin base URL")
    origin_token: str | None = Field(
        default=None, validation_alias=AliasChoices("ATCDN_ORIGIN_TOKEN", "origin_token"),
        description="the origin's write token (PUT /blob)")
    origin_admin_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ATCDN_ORIGIN_ADMIN_TOKEN", "origin_admin_token"),
        description="the origin's admin token (#account takedowns and restores)")
    data_dir: Path = Field(default=Path("atcdn-data/ingest"),
                           description="cursor, record index, backfill state, download spool")
    plc_url: str = Field(
        default="https://plc.directory", description="PLC directory for did:plc documents",
        validation_alias=AliasChoices("ATCDN_PLC_URL", "plc_url"),
    )
    allow_private_networks: bool = Field(
        default=False, description="let PDS/DID fetches reach private addresses (tests only)",
        validation_alias=AliasChoices("ATCDN_ALLOW_PRIVATE_NETWORKS", "allow_private_networks"),
    )
    # Politeness towards each PDS.
    pds_concurrency: int = Field(default=4, ge=1, description="getBlob requests at once per PDS")
    pds_rate: float = Field(default=10.0, gt=0, description="getBlob requests per second per PDS")
    workers: int = Field(default=16, ge=1, description="blobs handled at once, all PDSes")
    queue_size: int = Field(
        default=256, ge=1, description="blobs waiting for a worker before reading pauses")
    retries: int = Field(default=3, ge=0, description="retries of a failed getBlob")
    retry_backoff: float = Field(default=1.0, ge=0, description="first retry delay, doubled")
    max_blob_bytes: Size = Field(default=300 * 1024 * 1024, description="larger blobs are skipped")
    mime_types: str = Field(
        default="image/*,video/*",
        description="comma-separated MIME patterns to fetch ('*' for every blob)")
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    fetch_deadline: float = Field(default=600.0, description="seconds one blob download may take")
    # The firehose connection.
    ping_interval: float = Field(default=20.0, gt=0, description="websocket ping every N s")
    ping_timeout: float = Field(default=20.0, gt=0, description="reconnect if no pong within")
    reconnect_max_backoff: float = Field(default=60.0, gt=0)
    cursor_flush_interval: float = Field(
        default=1.0, gt=0, description="seconds between cursor writes (a replay, never a gap)")
    max_frame_bytes: Size = Field(default=8 * 1024 * 1024, description="larger frames are dropped")
    # Status.
    status_host: str = Field(default="127.0.0.1", description="address of /health and /metrics")
    status_port: int = Field(default=8300, description="/health and /metrics; 0 turns it off")
    publish_feed: bool = Field(
        default=False,
        description="also publish account takedowns/restores to the AWS takedown feed")
    # The label follower (``atcdn ingest labels``).
    labeler: str | None = Field(
        default=None, description="ws(s):// URL of a labeler (subscribeLabels)")
    labeler_did: str | None = Field(
        default=None, description="the labeler's DID: its #atproto_label key signs the labels")
    label_values: str = Field(
        default="!takedown,!suspend",
        description="comma-separated label values that take a subject down (Ozone labels a "
                    "suspended account !suspend)")
    label_sweep_interval: float = Field(
        default=2.0, gt=0, description="seconds between checks for pending and expired labels")
    labels_status_port: int = Field(
        default=8301, description="/health and /metrics of ingest labels; 0 turns it off")
