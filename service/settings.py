"""Service settings: one pydantic-settings class, environment prefix MLA_."""

from __future__ import annotations

import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["cuda", "cpu"]


def _default_providers() -> list[Provider]:
    return ["cuda", "cpu"]


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

    os.cpu_count() counts the host's cores: in a container limited to 4 CPUs on a 64-core node
    (Kubernetes `limits.cpu`, `docker run --cpus`) it says 64, and as many decode workers would
    each get their own memory allowance and share 4 cores. The quota is cgroup v2's `cpu.max`
    ("QUOTA PERIOD", or "max") or v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`; a fraction of a
    core counts as one.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = period = None
    try:
        if (cgroup / "cpu.max").is_file():
            q, p = (cgroup / "cpu.max").read_text().split()[:2]
            quota, period = (None if q == "max" else int(q)), int(p)
        elif (cgroup / "cpu" / "cpu.cfs_quota_us").is_file():
            q1 = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            quota, period = (q1 if q1 > 0 else None), int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):  # unreadable or malformed: no quota known
        quota = None
    if quota is not None and period:
        cores = min(cores, math.ceil(quota / period))
    return max(1, cores)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLA_", env_file=None, extra="ignore")

    # model
    model_dir: Path = Field(Path("models/default"), description="a model version folder, or a model folder holding versions")
    model_version: str | None = Field(None, description="version to serve when model_dir holds several (default: the highest)")
    model_poll_seconds: float = Field(
        0.0, ge=0, description="look for a new highest version this often and swap to it without a failed request (0: off)"
    )
    providers: Annotated[list[Provider], NoDecode] = Field(
        default_factory=_default_providers, description="execution providers in order of preference (MLA_PROVIDERS=cuda,cpu)"
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads per server session (0: its default, capped at the usable cores)"
    )
    inference: Literal["auto", "server", "workers"] = Field(
        "auto",
        description="where the graphs run: server (a session per modality behind a micro-batcher), workers (each "
        "decode worker runs the graph on what it decoded, one thread; only outputs cross processes), auto (server "
        "when a session gets the CUDA provider, else workers)",
    )
    # input limits
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0, description="per request, all files together")
    max_audio_seconds: float = Field(60.0, gt=0)
    max_video_seconds: float = Field(60.0, gt=0)
    max_video_pixels: int = Field(1920 * 1080, gt=0, description="width x height of one frame")
    max_video_frames: int = Field(3600, gt=0)
    min_audio_rate: int = Field(1_000, gt=0, description="declared sample rate, Hz")
    max_audio_rate: int = Field(384_000, gt=0, description="declared sample rate, Hz")
    max_audio_channels: int = Field(32, ge=1)
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="width x height of an image")
    max_text_bytes: int = Field(16_384, gt=0, description="UTF-8 bytes of a text input")
    max_streams: int = Field(32, ge=1, description="streams in one container")
    # decode workers
    decode_workers: int = Field(default_factory=usable_cpus, ge=1, description="default: the usable cores (cgroup quota)")
    decode_timeout_seconds: float = Field(20.0, gt=0, description="a decode running longer is killed: 413")
    decode_memory_mb: int = Field(1024, ge=64, description="address space a worker may add to its own after start-up")
    decode_queue_per_worker: int = Field(32, ge=0, description="decodes that may wait for a worker, per worker; more: 503")
    decode_wait_seconds: float = Field(5.0, gt=0, description="longest wait for a free worker; longer: 503")
    # batching
    max_batch_size: int = Field(32, ge=1)
    # 0: a batch runs at once; under load, the requests that arrive while one call runs form the next batch
    max_queue_delay_ms: float = Field(0.0, ge=0, description="extra wait to grow a batch")
    max_queue_length: int = Field(256, ge=1)
    # Every session call has a bucket size (1, 2, 4, ... max_batch_size), all warmed before ready.
    batch_fill: Literal["auto", "pad", "split"] = Field(
        "auto",
        description="a batch between bucket sizes: pad (zero rows up to the next), split (the largest it fills), "
        "auto (pad on CUDA, split on CPU)",
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="decoding, inference and fusion of one request, once its body is in; longer: 503"
    )
    # admission: refused with 503 + Retry-After before the body is read
    max_requests_in_flight: int = Field(64, ge=1, description="predictions being received or served at once; more: 503")
    max_spool_bytes: int = Field(
        512 * 1024 * 1024, ge=0, description="bytes of uploads on disk (MLA_TMP_DIR) at once, all requests together; more: 503"
    )
    max_body_memory_bytes: int = Field(
        512 * 1024 * 1024,
        ge=0,
        description="memory for Open Inference Protocol bodies at once, all requests together: each body's bytes, and "
        "12x its JSON part while that is parsed; more: 503",
    )
    max_json_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="the JSON part of an inference request (big tensors go as binary data); more: 413"
    )
    memory_upload_bytes: int = Field(
        1024 * 1024, ge=0, description="a file up to this size stays in memory and never touches MLA_TMP_DIR"
    )
    min_free_disk_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="free space MLA_TMP_DIR must keep for the replica to report ready"
    )
    # the HTTP edge (mla serve's uvicorn): each a bound a single client cannot pass
    body_timeout_seconds: float = Field(30.0, gt=0, description="to receive a request's whole body; longer: 408")
    body_idle_seconds: float = Field(10.0, gt=0, description="longest pause between two pieces of a body; longer: 408")
    header_timeout_seconds: float = Field(10.0, gt=0, description="to receive a request's headers once it starts; longer: 408")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="request line and headers together; more: 431")
    max_headers: int = Field(100, ge=8, description="header fields in one request; more: 431")
    max_connections: int = Field(
        2048, ge=16, description="open connections; past it the one longest waiting for its headers is closed"
    )
    decode_hang_seconds: float = Field(
        5.0, gt=0, description="a busy decode worker that uses no CPU for this long is hung: replaced, its request 503"
    )
    public_routes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/metrics"],
        description="routes answered without MLA_API_KEY when it is set, besides the probes (comma-separated)",
    )
    # access and logging
    api_key: SecretStr | None = Field(None, description="when set, /v1 routes need X-API-Key or Authorization: Bearer")
    admin_key: SecretStr | None = Field(None, description="/admin routes need it (X-Admin-Key); unset: /admin is off")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    tmp_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "mla-serve", description="uploads land here, briefly"
    )

    @field_validator("providers", "cors_origins", "public_routes", mode="before")
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
