"""The null driver: domains without a hypervisor, **for benchmarks and the driver
contract suite only**.

A domain here is a registered config (``<state dir>/null/<uuid>/domain.json``) and a
run state file (``running``, ``paused`` or ``shutoff``): pause, unpause, start and
destroy only rewrite that file, and a memory save writes a small placeholder image
(fsynced, mode 0600 in a 0700 directory, as a real one). Disks are real images: their
snapshots are taken with ``qemu-img`` (internal snapshots, qcow2 overlays, commits), so
the contract suite holds this driver to what it holds every other driver to.

Why it exists: the fleet benchmark (``bench/fleet.py``, issue 11) measures what
domsnap's queue, admission, journal, commit and Redis traffic cost per job, which a
real hypervisor's work would hide. It must never run a real domain: the settings'
auto-detection never picks it (it is selected only by ``--driver null`` /
``DOMSNAP_DRIVER=null``), the worker logs a warning when it is selected, and neither
the demo nor the end-to-end tests use it.
"""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from pathlib import Path

from domsnap.errors import InvalidInput, Refused, UnknownDomain
from schemas.config import DomainConfig
from schemas.models import DiskInfo, DomainInfo
from workers.block.qemu_img import QemuImg
from workers.drivers.base import Capabilities, DiskOp, Driver, LiveResult, Progress
from workers.hostio.fsutil import atomic_write
from workers.hostio.runner import Runner

MEMORY_MAGIC = b"domsnap-null-memory\n"  # the whole "memory image" of a null domain
WARNING = ("driver 'null' selected: domains have no hypervisor (benchmarks and contract "
           "tests only; never for real domains)")


class NullDriver(Driver):
    name = "null"
    capabilities = Capabilities(live_memory=True, live_disks=True, internal=True, external=True,
                                revert_memory=True, live_merge=True)

    def __init__(self, state_dir: Path, runner: Runner, *, img: QemuImg | None = None) -> None:
        self.root = state_dir / "null"
        self.img = img or QemuImg(runner)

    # ------------------------------------------------------------ registry

    def _dir(self, uuid: str) -> Path:
        return self.root / uuid

    def define(self, config: DomainConfig, *, state: str = "shutoff") -> DomainConfig:
        """Register a domain (``state``: its run state from the start)."""
        cfg = config.model_copy(update={"uuid": config.uuid or str(uuidlib.uuid4())})
        assert cfg.uuid is not None
        if (self._dir(cfg.uuid) / "domain.json").exists():
            raise InvalidInput(f"a domain with uuid {cfg.uuid} exists already", field="uuid")
        self._dir(cfg.uuid).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.set_domain_config(cfg.uuid, cfg)
        self._state(cfg.uuid, state)
        return cfg

    def _registered(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "domain.json").is_file())

    def domain_config(self, uuid: str) -> DomainConfig:
        try:
            return DomainConfig.model_validate_json((self._dir(uuid) / "domain.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise UnknownDomain(f"no domain {uuid} on this host", domain=uuid) from None

    def set_domain_config(self, uuid: str, config: DomainConfig) -> None:
        atomic_write(self._dir(uuid) / "domain.json", config.model_dump_json())

    def _state(self, uuid: str, value: str | None = None) -> str:
        path = self._dir(uuid) / "runstate"
        if value is not None:
            path.write_text(value)
            return value
        try:
            return path.read_text().strip() or "shutoff"
        except FileNotFoundError:
            raise UnknownDomain(f"no domain {uuid} on this host", domain=uuid) from None

    def domain_info(self, uuid: str) -> DomainInfo:
        cfg = self.domain_config(uuid)
        disks = [DiskInfo(vdev=d.vdev, path=d.target, format=d.format, writable=d.writable,
                          cdrom=d.devtype == "cdrom", backend="null") for d in cfg.disks]
        return DomainInfo(uuid=uuid, name=cfg.name, state=self._state(uuid),  # type: ignore[arg-type]
                          disks=disks)

    def list_domains(self) -> list[DomainInfo]:
        out = []
        for uuid in self._registered():
            try:
                out.append(self.domain_info(uuid))
            except (UnknownDomain, ValueError, OSError):
                continue  # removed or half-written while listing
        return out

    # ------------------------------------------------------------ run state

    def _active(self, uuid: str) -> str:
        state = self._state(uuid)
        if state == "shutoff":
            raise Refused(f"domain {uuid} is not running", domain=uuid)
        return state

    def pause(self, uuid: str) -> None:
        self._active(uuid)
        self._state(uuid, "paused")

    def unpause(self, uuid: str) -> None:
        self._active(uuid)
        self._state(uuid, "running")

    def start(self, uuid: str, config: DomainConfig, *, paused: bool,
              memory_file: Path | None = None) -> None:
        if self._state(uuid) != "shutoff":
            raise Refused(f"domain {uuid} is already running", domain=uuid)
        if memory_file is not None and memory_file.read_bytes() != MEMORY_MAGIC:
            raise InvalidInput(f"{memory_file} is not a null driver memory image",
                               field="memory_file")
        self.set_domain_config(uuid, config)
        self._state(uuid, "paused" if paused else "running")

    def destroy(self, uuid: str) -> None:
        self._state(uuid)  # UnknownDomain for a domain this host does not have
        self._state(uuid, "shutoff")

    # ------------------------------------------------------------ snapshots

    def capture(self, uuid: str, *, name: str, memory_file: Path | None,
                disks: list[DiskOp], progress: Progress) -> LiveResult:
        state = self._active(uuid)
        result = LiveResult(domain_state=state)
        t0 = time.monotonic()
        if memory_file is not None:
            atomic_write(memory_file, MEMORY_MAGIC.decode())
            result.memory_bytes = len(MEMORY_MAGIC)
            result.memory_save_ms = round((time.monotonic() - t0) * 1000, 3)
        t1 = time.monotonic()
        done: list[DiskOp] = []
        try:
            for op in disks:
                self._take(op, name)
                done.append(op)
        except BaseException:
            self.undo_disks(uuid, name=name, disks=done)
            raise
        result.disks_ms = round((time.monotonic() - t1) * 1000, 3)
        if state == "running":
            result.pause_ms = round((time.monotonic() - t0) * 1000, 3) or 0.001
        return result

    def _take(self, op: DiskOp, name: str) -> None:
        if op.type == "internal":
            self.img.snapshot_create(op.path, name)
        else:
            assert op.target is not None
            self.img.create(op.target, fmt="qcow2", backing=op.path, backing_fmt=op.format)

    def undo_disks(self, uuid: str, *, name: str, disks: list[DiskOp]) -> None:
        for op in disks:
            if op.type == "internal":
                if name in self.img.snapshot_list(op.path):
                    self.img.snapshot_delete(op.path, name)
            elif op.target:
                Path(op.target).unlink(missing_ok=True)

    def delete_internal_live(self, uuid: str, *, name: str, path: str) -> None:
        self.img.snapshot_delete(path, name)

    def commit_live(self, uuid: str, *, top: str, base: str) -> None:
        if os.path.realpath(self.img.backing_file(top) or "") != os.path.realpath(base):
            raise Refused(f"{top} is not an overlay of {base}", path=top)
        self.img.commit(top)
