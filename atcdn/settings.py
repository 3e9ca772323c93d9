"""Typed settings, the one home of configuration.

Every field is read from an ``ATCDN_*`` environment variable; the CLI turns its flags
into those variables before a server starts, so every worker process of a server sees
the same configuration. The README lists every variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    # Video (/watch): transcodes to HLS run in child processes, at most
    # video_max_concurrent per node, video_queue_length more waiting per worker.
    video_max_bytes: int = 300 * 1024 * 1024
    video_max_seconds: float = 600.0
    video_max_pixels: int = 4096 * 2304
    video_timeout: float = 900.0
    video_memory_bytes: int = 3 * 1024**3
    video_max_concurrent: int = 1
    video_queue_length: int = 8
    video_threads: int = 0
