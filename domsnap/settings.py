"""Settings: environment variables prefixed ``DOMSNAP_``, optionally a TOML file.

Defaults work on a single machine out of the box. Secrets (passwords in the
Redis/broker URLs) come only from the environment or the file named by
``DOMSNAP_CONFIG``; they are never written to records or logs.
"""

from __future__ import annotations

import os
import shutil
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_run_dir() -> Path:
    """Short-lived runtime files (QMP sockets): a short path, since a unix socket path
    must stay under 108 bytes."""
    if os.geteuid() == 0 and Path("/run").is_dir():
        return Path("/run/domsnap")
    return Path(f"/tmp/domsnap-{os.geteuid()}")


def _default_state_dir() -> Path:
    return Path("/var/lib/domsnap") if os.geteuid() == 0 else Path.home() / ".local/state/domsnap"


class Settings(BaseSettings):
    """Every knob of domsnap, read once per process."""

    model_config = SettingsConfigDict(env_prefix="DOMSNAP_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    result_backend_url: str = ""  # empty: same as redis_url
    key_prefix: str = "domsnap"

    state_dir: Path = Field(default_factory=_default_state_dir)
    run_dir: Path = Field(default_factory=default_run_dir)
    snapshot_dir: Path | None = None  # default: <state_dir>/snapshots (qemu driver)
    snapshot_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    host: str = Field(default_factory=socket.gethostname)
    # empty: xl where the xl binary is on PATH (a Xen dom0), else qemu
    driver: Literal["qemu", "xl", ""] = ""

    job_ttl_s: int = 7 * 24 * 3600
    heartbeat_s: float = 5.0
    host_ttl_s: float = 20.0
    lock_ttl_s: int = 3600
    pause_budget_ms: int = 60_000
    concurrency: int = 2
    inflight_concurrency: int = 2
    command_timeout_s: float = 600.0
    # the scheduler (domsnap scheduler): longest sleep between two beat ticks (policy
    # changes show within it; the leader lock lasts 5x this); metrics port, 0 = none
    beat_max_interval_s: float = Field(default=5.0, gt=0)
    schedule_queue: str = Field(default="domsnap.schedule", pattern=r"^[A-Za-z0-9_.-]{1,200}$")
    metrics_port: int = Field(default=0, ge=0, le=65535)

    xl_binary: str = "xl"
    xen_run_dir: Path = Path("/var/run/xen")  # where libxl puts qmp-libxl-<domid>
    lvm_binary: str = "lvm"
    # COW space of an LVM snapshot: a size ("10G") or extents ("100%ORIGIN": can never
    # fill up and be invalidated, at the price of the origin's size)
    lvm_snapshot_size: str = "100%ORIGIN"

    qemu_binary: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    # bytes/s for a memory save to a local file; QEMU's own default (128 MiB/s) is
    # meant for networks and makes saves ~10x slower (docs/benchmarks.md)
    qemu_memory_bandwidth: int = Field(default=64 << 30, ge=1 << 20)
    qemu_accel: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: auto

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        cfg = os.environ.get("DOMSNAP_CONFIG")
        if cfg:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cfg))
        return tuple(sources)

    @field_validator("snapshot_roots", "qemu_accel", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            sep = ":" if "/" in value else ","
            return [p for p in value.split(sep) if p.strip()]
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.broker_url:
            self.broker_url = self.redis_url
        if not self.result_backend_url:
            self.result_backend_url = self.redis_url
        if not self.driver:
            self.driver = "xl" if shutil.which(self.xl_binary) else "qemu"
        return self

    @property
    def snapshots(self) -> Path:
        """Where snapshot files and sidecar records go on this host."""
        if self.snapshot_dir:
            return self.snapshot_dir
        if self.driver == "xl":  # where the libxl snapshot RFC put them
            return Path("/var/lib/xen/snapshots")
        return self.state_dir / "snapshots"

    @property
    def allowed_roots(self) -> list[Path]:
        """Roots that external targets and memory files must stay under."""
        return [self.snapshots, *self.snapshot_roots]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI's --host override)."""
    get_settings.cache_clear()
