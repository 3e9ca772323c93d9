"""Typed settings, the one home of configuration.

Every field is read from an ``ATCDN_*`` environment variable; the CLI turns its flags
into those variables before a server starts, so every worker process of a server sees
the same configuration. The README lists every variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from atcdn.core.limits import FetchLimits, ImageLimits, VideoLimits, WorkerLimits
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Server = Literal["granian", "uvicorn"]


class OriginSettings(BaseSettings):
    """The origin: content-addressed blob storage. Variables ``ATCDN_ORIGIN_*``."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_ORIGIN_")

    host: str = "127.0.0.1"
    port: int = 8100
    workers: int = 1
    server: Server = "granian"
    data_dir: Path = Path("atcdn-data/origin")
    token: str | None = Field(default=None, description="bearer token for every write")
    max_blob_bytes: int = 300 * 1024 * 1024
    store: Literal["fs", "s3"] = "fs"
    s3_endpoint: str | None = None
    s3_bucket: str = "atcdn"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_path_style: bool = True
    s3_prefix: str = "blobs/"


class EdgeSettings(BaseSettings):
    """An edge cache node. Variables ``ATCDN_EDGE_*``, plus the three shared ones below."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_EDGE_", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8200
    workers: int = 2
    server: Server = "granian"
    origin: str = "http://127.0.0.1:8100"
    cache_dir: Path = Path("atcdn-data/edge")
    cache_size: int = 10 * 1024**3
    plc_url: str = Field(
        default="https://plc.directory",
        validation_alias=AliasChoices("ATCDN_PLC_URL", "plc_url"),
    )
    pds_fallback: bool = Field(
        default=True,
        validation_alias=AliasChoices("ATCDN_PDS_FALLBACK", "pds_fallback"),
    )
    allow_private_networks: bool = Field(
        default=False,
        validation_alias=AliasChoices("ATCDN_ALLOW_PRIVATE_NETWORKS", "allow_private_networks"),
    )
    # Edge server (edge/app.py, fetch.py, cache.py).
    origin_token: str | None = Field(
        default=None, description="bearer token to hand PDS-fetched blobs to the origin")
    purge_token: str | None = Field(
        default=None, description="bearer token for POST /admin/purge and /admin/takedown")
    enable_avif: bool = Field(default=False, description="offer AVIF to Accept: image/avif")
    memory_cache_size: int = Field(
        default=256 * 1024**2, description="in-memory tier budget per worker, bytes")
    memory_max_item: int = Field(
        default=1024**2, description="larger entries live only on disk, served as files")
    memory_file_max: int = Field(
        default=8 * 1024**2,
        description="disk-file entries up to this size are also held whole in each worker's"
                    " memory tier (granian sends a body faster than a file); 0: send files")
    # Fetches (edge/fetch.py, the SSRF guard). Every limit's default is in core/limits.py.
    max_fetch_bytes: int = FetchLimits.max_bytes
    fetch_connect_timeout: float = FetchLimits.connect_timeout
    fetch_timeout: float = FetchLimits.timeout
    fetch_retries: int = 2
    max_redirects: int = FetchLimits.max_redirects
    retry_after: int = Field(default=5, description="Retry-After seconds on 502/503/504")
    presets: str | None = Field(
        default=None, description="JSON object of extra/overriding image presets")
    max_pending_misses: int = Field(
        default=512, description="cache misses in progress per worker before answering 429")
    # Image transforms (edge/image.py, edge/transform.py): source limits and worker pool.
    image_max_source_bytes: int = ImageLimits.max_source_bytes
    image_max_source_pixels: int = ImageLimits.max_source_pixels
    image_max_frames: int = ImageLimits.max_frames
    image_max_animation_pixels: int = ImageLimits.max_animation_pixels
    transform_workers: int = WorkerLimits.workers
    transform_timeout: float = WorkerLimits.timeout
    transform_memory_mb: int = WorkerLimits.memory_mb

    # Video (/watch): transcodes to HLS run in child processes, at most
    # video_max_concurrent per node, video_queue_length more waiting per worker.
    video_max_bytes: int = VideoLimits.max_bytes
    video_max_seconds: float = VideoLimits.max_seconds
    video_max_pixels: int = VideoLimits.max_pixels
    video_timeout: float = VideoLimits.timeout
    video_memory_bytes: int = VideoLimits.memory_bytes
    video_max_concurrent: int = 1
    video_queue_length: int = 8
    video_threads: int = VideoLimits.threads


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
    aws_region: str = "us-east-1"
    hosted_zone_id: str | None = Field(default=None, description="Route53 zone of the edges")
    edge_record_name: str = Field(
        default="cdn.example.com", description="DNS name every edge answers under")
    edge_record_ttl: int = 60
    health_check_path: str = "/health"
    health_check_port: int = 443
    health_check_protocol: Literal["HTTP", "HTTPS"] = "HTTPS"
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
    plus ``ATCDN_ORIGIN_TOKEN`` (the origin's write token), ``ATCDN_PLC_URL`` and
    ``ATCDN_ALLOW_PRIVATE_NETWORKS`` shared with the edge."""

    model_config = SettingsConfigDict(env_prefix="ATCDN_INGEST_", populate_by_name=True)

    firehose: str | None = Field(
        default=None, description="ws(s):// URL of a relay or PDS (subscribeRepos)")
    origin: str = "http://127.0.0.1:8100"
    origin_token: str | None = Field(
        default=None, validation_alias=AliasChoices("ATCDN_ORIGIN_TOKEN", "origin_token"),
        description="bearer token for the origin's writes (PUT /blob, /admin/*)")
    data_dir: Path = Field(default=Path("atcdn-data/ingest"),
                           description="cursor, record index, backfill state, download spool")
    plc_url: str = Field(
        default="https://plc.directory",
        validation_alias=AliasChoices("ATCDN_PLC_URL", "plc_url"),
    )
    allow_private_networks: bool = Field(
        default=False,
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
    max_blob_bytes: int = Field(default=300 * 1024 * 1024, description="larger blobs are skipped")
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
    max_frame_bytes: int = Field(default=8 * 1024 * 1024, description="larger frames are dropped")
    # Status.
    status_host: str = "127.0.0.1"
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
