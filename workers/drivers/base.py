"""The hypervisor driver interface.

One method per capability; what a driver can do is data
(:class:`Capabilities`), so the engine plans an operation from data and the
contract suite in ``tests/`` can hold every driver to the same behaviour.
Drivers never import Celery and never touch Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domsnap.errors import UnknownDomain
from schemas.config import DomainConfig
from schemas.models import DomainInfo

Progress = Callable[[str, str], None]  # (step, message)


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do; the engine plans from this, never from the driver's type."""

    live_memory: bool  # memory copied while the guest runs; pause only for the switchover
    live_disks: bool  # disk snapshots of a running domain in one atomic transaction
    internal: bool
    external: bool
    revert_memory: bool
    live_merge: bool  # block-commit / internal delete on a running domain


@dataclass(frozen=True)
class DiskOp:
    """One disk of a snapshot create: ``path`` is the disk's active image now."""

    vdev: str
    path: str
    format: str
    type: Literal["internal", "external"]
    target: str | None = None  # external: the overlay (lvm: the snapshot volume) to create
    backend: str | None = None  # the toolstack's backend for the disk (Xen: qdisk, phy, ...)
    strategy: str = ""  # how it is taken (schemas.models.DiskStrategy), set by the plan


@dataclass
class LiveResult:
    """Timings of a live capture (all milliseconds)."""

    pause_ms: float | None = None
    memory_save_ms: float | None = None
    memory_bytes: int | None = None
    disks_ms: float = 0.0  # the one atomic transaction that took every disk
    fsync_ms: float | None = None  # syncing the memory image (after the guest resumed)
    domain_state: str = "running"
    # how the memory was saved (xl: "live" through xl migrate, or "save": xl save -p)
    memory_strategy: str | None = None
    memory_fallback: str | None = None  # why not live, when live was the setting's choice
    memory_page_records: int | None = None  # PAGE_DATA records of the stream (xl live)
    memory_rounds: int | None = None  # precopy rounds told apart in the stream (xl live)
    # when the pause began and ended (epoch seconds, QEMU's STOP/RESUME event stamps),
    # so that the pause can be placed next to what the guest showed (bench/libvirt.py)
    stopped_at: float | None = None
    resumed_at: float | None = None


class Driver(abc.ABC):
    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    def list_domains(self) -> list[DomainInfo]:
        """Every domain this host knows, running or shut off."""

    def find(self, ref: str) -> str:
        """A domain's uuid from its uuid or name; UnknownDomain if this host has none."""
        for info in self.list_domains():
            if ref in (info.uuid, info.name):
                return info.uuid
        raise UnknownDomain(f"no domain {ref!r} on this host", domain=ref)

    @abc.abstractmethod
    def domain_info(self, uuid: str) -> DomainInfo:
        """One domain; UnknownDomain if this host does not have it."""

    @abc.abstractmethod
    def domain_config(self, uuid: str) -> DomainConfig:
        """The config the domain runs with now (active image paths included)."""

    @abc.abstractmethod
    def set_domain_config(self, uuid: str, config: DomainConfig) -> None:
        """Remember a new config (after external snapshots, reverts, merges)."""

    @abc.abstractmethod
    def pause(self, uuid: str) -> None: ...

    @abc.abstractmethod
    def unpause(self, uuid: str) -> None: ...

    def resume_after_crash(self, uuid: str, *, state: str) -> str:
        """Bring a domain that an operation cut short (its worker killed, its pause
        budget spent) to ``state`` ("running" or "paused") and return the state it is in
        now: "shutoff" when it could only be stopped (a memory restore cut short is never
        left paused half-loaded). Needs no Redis: the host's guard calls it.

        This default unpauses a paused domain that should run, and pauses a running one
        that should stay paused."""
        info = self.domain_info(uuid)
        if info.state not in ("running", "paused"):
            return "shutoff"
        if state == "running" and info.state == "paused":
            self.unpause(uuid)
        elif state == "paused" and info.state == "running":
            self.pause(uuid)
        return state

    def recover_windows(self, *, blocking: bool) -> int:
        """Bring back every domain that a stop-and-restore window of this driver, cut
        short by a dead worker, left down; how many could not be yet. ``blocking``:
        wait for a window still held (start-up recovery), else leave it (the guard).
        Only Xen's save/restore fallback has such windows: elsewhere nothing to do."""
        return 0

    def windows_open(self) -> int:
        """How many such windows exist now, settled or not (open, or left by a dead
        worker): the guard does not exit while one does, since the worker that held it
        may have died a moment ago with a child still holding its lock."""
        return 0

    def watch_shutdowns(self, *, busy: Callable[[str], bool]) -> list[dict[str, Any]]:
        """Act on the shutdowns of domains whose toolstack monitor is gone, as it would
        have (Xen: ``xl create``'s monitor exits at the first suspend, so after a memory
        snapshot domsnap takes the config's ``on_reboot`` etc.); skip a domain for which
        ``busy(uuid)`` (an operation holds it). One event (a JSON-able dict) per action,
        for the guard's log and the audit. The host's guard calls it every round; only
        Xen loses its monitor: elsewhere there is nothing to do."""
        return []

    def resume_suspended(self, uuid: str) -> bool:
        """Resume a domain that a suspend left shut down and nobody resumed (Xen: an
        ``xl save`` that died after the guest suspended); whether there was one. Only
        Xen has such a state: elsewhere there is nothing to do."""
        return False

    @abc.abstractmethod
    def capture(
        self,
        uuid: str,
        *,
        name: str,
        memory_file: Path | None,
        disks: list[DiskOp],
        progress: Progress,
    ) -> LiveResult:
        """Save memory (if asked) and snapshot ``disks`` of a running or paused domain,
        with the guest paused as briefly as the hypervisor allows.

        On return the domain is back in the run state it had. On error the domain is
        back in that state too, and no disk snapshot of this call remains.
        """

    @abc.abstractmethod
    def undo_disks(self, uuid: str, *, name: str, disks: list[DiskOp]) -> None:
        """Remove disk snapshots that :meth:`capture` took (roll back a later failure)."""

    @abc.abstractmethod
    def delete_internal_live(self, uuid: str, *, name: str, path: str) -> None:
        """Delete internal snapshot ``name`` from the image ``path`` a running domain uses."""

    @abc.abstractmethod
    def commit_live(self, uuid: str, *, top: str, base: str) -> None:
        """Merge image ``top`` into its backing ``base`` while the domain runs."""

    @abc.abstractmethod
    def start(
        self, uuid: str, config: DomainConfig, *, paused: bool, memory_file: Path | None = None
    ) -> None:
        """Start the domain from ``config``; from ``memory_file`` when given (restore)."""

    @abc.abstractmethod
    def destroy(self, uuid: str) -> None:
        """Stop the domain at once; it stays known (shut off). No-op if not running."""

    def disk_strategies(self, uuid: str, ops: list[DiskOp], *, active: bool) -> list[str]:
        """How each of ``ops`` will be taken (a ``schemas.models.DiskStrategy`` each),
        decided when the operation is planned; raises Refused for a disk that cannot be.

        The default suits a driver whose disks all live in its QEMU: one atomic QMP
        transaction while the domain runs, ``qemu-img`` while it is shut off."""
        return ["qmp" if active else "qemu-img" for _ in ops]

    def is_active(self, uuid: str) -> bool:
        return self.domain_info(uuid).state in ("running", "paused")
