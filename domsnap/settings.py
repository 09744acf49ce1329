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


# how long the Redis transport waits for an unacked message before redelivering it
VISIBILITY_TIMEOUT_S = 4 * 3600
TASK_KILL_GRACE_S = 300


class Settings(BaseSettings):
    """Every knob of domsnap, read once per process."""

    model_config = SettingsConfigDict(env_prefix="DOMSNAP_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""  # empty: same as redis_url
    result_backend_url: str = ""  # empty: same as redis_url
    key_prefix: str = "domsnap"
    # how the client puts create/revert/delete requests on a host's queue: "direct"
    # (on a plain redis:// broker: one LPUSH of Celery's own envelope, without loading
    # Celery; domsnap/enqueue.py) or "celery" (send_task); other brokers always use Celery
    enqueue: Literal["direct", "celery"] = "direct"

    state_dir: Path = Field(default_factory=_default_state_dir)
    run_dir: Path = Field(default_factory=default_run_dir)
    snapshot_dir: Path | None = None  # default: <state_dir>/snapshots (qemu driver)
    snapshot_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    host: str = Field(default_factory=socket.gethostname)
    # empty: xl where the xl binary is on PATH (a Xen dom0), else qemu; "null" (no
    # hypervisor: benchmarks and the driver contract suite only) is never auto-detected
    driver: Literal["qemu", "xl", "null", ""] = ""

    job_ttl_s: int = 7 * 24 * 3600
    heartbeat_s: float = 5.0
    host_ttl_s: float = 20.0
    # how often the inventory is listed and published (None: every heartbeat)
    inventory_s: float | None = Field(default=None, gt=0.0)
    # liveness is renewed while the inventory listing now running (if any) has run for
    # less than this: `xl list -l` of a busy dom0 can outlast the TTL (workers/heartbeat.py)
    inventory_stall_s: float = Field(default=300.0, gt=0.0)
    lock_ttl_s: int = 3600
    pause_budget_ms: int = 60_000  # how long new work waits at the gate, at most
    # The pause budget of one operation, enforced by the host's guard (workers/guard.py):
    # 0 sizes it from the domain's memory (see pause_budget_for); a positive value is
    # used as is (tests use a few seconds).
    pause_budget_s: float = Field(default=0.0, ge=0.0)
    pause_budget_min_s: float = Field(default=30.0, gt=0.0)
    # assumed rate of a memory save/restore (MiB/s) when sizing the budget: `xl save`
    # of a 128 MiB PV domU took 2.9 s in the nested lab (~44 MiB/s)
    pause_save_rate_mib_s: float = Field(default=40.0, gt=0.0)
    guard_interval_s: float = Field(default=0.25, gt=0.0)
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
    # Xen's Python bindings (xen.lowlevel.xc/xs), used to resume a domain that a dead
    # `xl save` left suspended; empty: the newest /usr/lib/xen-*/lib/python
    xen_python_dir: Path | None = None
    # how the xl driver saves memory: "live" (xl migrate into domsnap's receiver: the
    # guest pauses only for the last round; falls back to save where it cannot) or
    # "save" (xl save -p: paused for the whole RAM write)
    xl_memory_strategy: Literal["live", "save"] = "live"
    lvm_binary: str = "lvm"
    # COW space of an LVM snapshot: a size ("10G") or extents ("100%ORIGIN": can never
    # fill up and be invalidated, at the price of the origin's size)
    lvm_snapshot_size: str = "100%ORIGIN"
    # free space that must remain on a filesystem after a memory image or overlay is
    # written there (checked before anything is written; overlays grow later)
    space_reserve_mb: int = Field(default=256, ge=0)
    # a task still running after this many seconds gets SoftTimeLimitExceeded (its step
    # rolls back and fails the job), and is killed TASK_KILL_GRACE_S later; both must stay
    # below the broker's visibility timeout, or Redis would hand the message to a second
    # worker while the first still runs it
    task_time_limit_s: int = Field(default=3 * 3600, ge=10, le=VISIBILITY_TIMEOUT_S - 600)

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

    def pause_budget_for(self, memory_mib: int) -> float:
        """Seconds a domain of ``memory_mib`` may stay paused by one operation: the
        configured budget, else twice the time to write its RAM at the assumed save
        rate plus 10 s, never below ``pause_budget_min_s`` (30 s: a PV guest may take
        that long to acknowledge a suspend)."""
        if self.pause_budget_s > 0:
            return self.pause_budget_s
        return max(self.pause_budget_min_s, 10.0 + 2.0 * memory_mib / self.pause_save_rate_mib_s)

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
