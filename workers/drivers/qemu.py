"""The qemu driver: domsnap is the toolstack. It starts QEMU (KVM, or TCG where
/dev/kvm is absent) from an xl-style domain config, one QMP socket per domain.

A domain's files live in ``<state dir>/domains/<uuid>/``: ``domain.json`` (the
registered config, so a shut-off domain stays known),
``qemu.pid``, ``console.log`` and ``runstate`` (running/paused, written by
domsnap so that listing domains never needs the single-client QMP socket). The QMP
socket is ``<run dir>/<uuid>.qmp``: a unix socket path must stay under 108 bytes,
which a state dir deep in the file system would not allow.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from domsnap.errors import (
    DomsnapError,
    InvalidInput,
    QMPError,
    Refused,
    UnknownDomain,
)
from domsnap.settings import default_run_dir
from schemas.config import DomainConfig
from schemas.models import DiskInfo, DomainInfo
from workers.block import qmpblock
from workers.block.blocknodes import snapshot_actions
from workers.block.qmp import QMPClient
from workers.drivers.accel import accelerators
from workers.drivers.base import Capabilities, DiskOp, Driver, LiveResult, Progress
from workers.hostio import faults
from workers.hostio.fsutil import fsync_path
from workers.hostio.runner import Runner

MEM_FD = "domsnap-mem"


def _event_time(ev: dict[str, Any]) -> float:
    ts = ev.get("timestamp") or {}
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6


class QemuDriver(Driver):
    name = "qemu"
    capabilities = Capabilities(live_memory=True, live_disks=True, internal=True, external=True,
                                revert_memory=True, live_merge=True)

    def __init__(self, state_dir: Path, runner: Runner, *, binary: str = "qemu-system-x86_64",
                 accel: list[str] | None = None, timeout: float = 600.0,
                 memory_bandwidth: int = 64 << 30, run_dir: Path | None = None) -> None:
        self.root = state_dir / "domains"
        self.runner = runner
        self.binary = binary
        self.accel = accelerators(accel)
        self.timeout = timeout
        self.memory_bandwidth = memory_bandwidth  # bytes/s for memory saves
        self.run_dir = run_dir or default_run_dir()

    # ------------------------------------------------------------ registry

    def _dir(self, uuid: str) -> Path:
        return self.root / uuid

    def qmp_path(self, uuid: str) -> Path:
        """The domain's QMP socket (one client at a time: connect, work, disconnect)."""
        return self.run_dir / f"{uuid}.qmp"

    def _registered(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "domain.json").is_file())

    def define(self, config: DomainConfig) -> DomainConfig:
        """Register a new domain (like the first half of ``xl create``)."""
        for other in self._registered():
            if self.domain_config(other).name == config.name:
                raise InvalidInput(f"a domain named {config.name!r} exists already (uuid {other})",
                                   field="name")
        cfg = config.model_copy(update={"uuid": config.uuid or str(uuidlib.uuid4())})
        assert cfg.uuid is not None
        if (self._dir(cfg.uuid) / "domain.json").exists():
            raise InvalidInput(f"a domain with uuid {cfg.uuid} exists already", field="uuid")
        for disk in cfg.disks:
            if disk.devtype == "disk" and disk.format not in ("qcow2", "raw"):
                raise InvalidInput(f"disk {disk.vdev}: format {disk.format} is not supported by "
                                   "the qemu driver (qcow2 or raw)", field="disk")
            if disk.target and "," in disk.target:
                raise InvalidInput(f"disk {disk.vdev}: a ',' in an image path is not supported",
                                   field="disk")
            if disk.target and not os.path.isabs(disk.target):
                raise InvalidInput(f"disk {disk.vdev}: target must be an absolute path",
                                   field="disk")
            if disk.target and disk.devtype == "disk" and not os.path.exists(disk.target):
                raise InvalidInput(f"disk {disk.vdev}: {disk.target} does not exist", field="disk")
        self._dir(cfg.uuid).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.set_domain_config(cfg.uuid, cfg)
        return cfg

    def undefine(self, uuid: str) -> None:
        self.destroy(uuid)
        d = self._dir(uuid)
        for name in ("domain.json", "runstate", "qemu.pid", "console.log"):
            (d / name).unlink(missing_ok=True)
        self.qmp_path(uuid).unlink(missing_ok=True)
        try:
            d.rmdir()
        except OSError:
            pass

    def domain_config(self, uuid: str) -> DomainConfig:
        path = self._dir(uuid) / "domain.json"
        try:
            return DomainConfig.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise UnknownDomain(f"no domain {uuid} on this host", domain=uuid) from None

    def set_domain_config(self, uuid: str, config: DomainConfig) -> None:
        path = self._dir(uuid) / "domain.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(config.model_dump_json(indent=2))
        os.replace(tmp, path)

    def find(self, ref: str) -> str:
        """A domain uuid from its uuid or name."""
        for uuid in self._registered():
            if uuid == ref.lower() or self.domain_config(uuid).name == ref:
                return uuid
        raise UnknownDomain(f"no domain {ref!r} on this host", domain=ref)

    # ------------------------------------------------------------ state

    def pid(self, uuid: str) -> int | None:
        """The pid of the domain's QEMU, if that process is alive (a reused pid is not)."""
        try:
            pid = int((self._dir(uuid) / "qemu.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        try:  # a reused pid is not our QEMU
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if uuid.encode() in cmdline else None

    def _runstate(self, uuid: str, value: str | None = None) -> str:
        path = self._dir(uuid) / "runstate"
        if value is not None:
            path.write_text(value)
            return value
        try:
            return path.read_text().strip() or "running"
        except FileNotFoundError:
            return "running"

    def domain_info(self, uuid: str) -> DomainInfo:
        cfg = self.domain_config(uuid)
        state = self._runstate(uuid) if self.pid(uuid) else "shutoff"
        if state == "shutoff" and self.pid(uuid):
            # a QEMU alive although the file says shut off: a start that never finished
            # (e.g. a memory restore cut short): not running, so paused
            state = "paused"
        disks = [DiskInfo(vdev=d.vdev, path=d.target, format=d.format, writable=d.writable,
                          cdrom=d.devtype == "cdrom", backend="qemu") for d in cfg.disks]
        return DomainInfo(uuid=uuid, name=cfg.name, state=state,  # type: ignore[arg-type]
                          disks=disks)

    def list_domains(self) -> list[DomainInfo]:
        out = []
        for uuid in self._registered():
            try:
                out.append(self.domain_info(uuid))
            except (DomsnapError, ValueError, OSError):
                continue
        return out

    # ------------------------------------------------------------ QMP

    def _qmp(self, uuid: str, timeout: float = 30.0) -> QMPClient:
        if not self.pid(uuid):
            raise Refused(f"domain {uuid} is not running", domain=uuid)
        return QMPClient(self.qmp_path(uuid), timeout=timeout)

    def pause(self, uuid: str) -> None:
        with self._qmp(uuid) as q:
            q.execute("stop")
        self._runstate(uuid, "paused")

    def unpause(self, uuid: str) -> None:
        """Resume the guest; a memory save left half-way (a worker killed at the
        switchover) is cancelled first, or QEMU would refuse to continue."""
        with self._qmp(uuid) as q:
            self._abort_migration(q)
            self._wait_finalized(q)
            q.execute("cont")
        self._runstate(uuid, "running")

    def resume_after_crash(self, uuid: str, *, state: str) -> str:
        """See :meth:`Driver.resume_after_crash`. A memory save left at or past the
        switchover is cancelled; block nodes that a completed save inactivated are
        activated again (``cont``, then ``stop`` for a paused domain, as after every
        paused memory save) before anyone does block work on them; a QEMU still in
        ``inmigrate`` (a restore cut short) is stopped: it cannot run half-loaded."""
        if not self.pid(uuid):
            return "shutoff"
        with self._qmp(uuid) as q:
            status = str(q.execute("query-status")["status"])
            if status != "inmigrate":
                self._abort_migration(q)
                self._wait_finalized(q)
                status = str(q.execute("query-status")["status"])
                if status != "running" and (state == "running" or status in (
                        "postmigrate", "finish-migrate")):
                    q.execute("cont")
                    status = "running"
                if state == "paused" and status == "running":
                    q.execute("stop")
                    status = "paused"
        if status == "inmigrate":
            self.destroy(uuid)
            return "shutoff"
        state = "running" if status == "running" else "paused"
        self._runstate(uuid, state)
        return state

    # ------------------------------------------------------------ create

    def capture(self, uuid: str, *, name: str, memory_file: Path | None,
                disks: list[DiskOp], progress: Progress) -> LiveResult:
        result = LiveResult()
        with self._qmp(uuid) as q:
            status = str(q.execute("query-status")["status"])
            was_running = status == "running"
            result.domain_state = "running" if was_running else "paused"
            nodes = q.execute("query-named-block-nodes")
            actions = snapshot_actions(nodes, name, disks)
            if memory_file is None:
                self._capture_disks_only(q, actions, was_running, result)
            else:
                self._capture_with_memory(q, uuid, memory_file, actions, was_running, result,
                                          progress)
            stops = [e for e in q.events if e.get("event") == "STOP"]
            resumes = [e for e in q.events if e.get("event") == "RESUME"]
            if was_running and stops and resumes:
                result.stopped_at = _event_time(stops[0])
                result.resumed_at = _event_time(resumes[-1])
                result.pause_ms = round((result.resumed_at - result.stopped_at) * 1000, 3)
        return result

    def _capture_disks_only(self, q: QMPClient, actions: list[dict[str, Any]], was_running: bool,
                            result: LiveResult) -> None:
        if was_running:
            q.execute("stop")
        try:
            self._transaction(q, actions, result)
        finally:
            if was_running:
                q.execute("cont")

    def _transaction(self, q: QMPClient, actions: list[dict[str, Any]],
                     result: LiveResult) -> None:
        result.disks_ms = qmpblock.transaction(q, actions)

    def _capture_with_memory(self, q: QMPClient, uuid: str, memory_file: Path,
                             actions: list[dict[str, Any]], was_running: bool,
                             result: LiveResult, progress: Progress) -> None:
        q.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "pause-before-switchover", "state": True},
            {"capability": "events", "state": True}]})
        # QEMU caps migration at 128 MiB/s by default (meant for networks); this one
        # goes to a local file, and a slow copy only gives the guest time to dirty more.
        q.execute("migrate-set-parameters", {"max-bandwidth": self.memory_bandwidth})
        memory_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(memory_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            q.send_fd(MEM_FD, fd)
        finally:
            os.close(fd)
        t0 = time.monotonic()
        progress("memory", "copying memory while the domain runs")
        q.execute("migrate", {"uri": f"fd:{MEM_FD}"})
        disks_taken = False
        resumed = False
        try:
            info = q.poll("query-migrate", None,
                          until=lambda r: r.get("status") in ("pre-switchover", "failed",
                                                              "cancelled", "completed"),
                          timeout=self.timeout)
            if info.get("status") != "pre-switchover":
                raise QMPError(f"memory save stopped: {info.get('status')}: "
                               f"{info.get('error-desc', '')}", sent="migrate", received=info)
            faults.point("capture-pre-switchover")
            # The guest is stopped here: take every disk at once, then switch over.
            self._transaction(q, actions, result)
            disks_taken = True
            faults.point("capture-after-transaction", qemu=lambda: self.pid(uuid))
            q.execute("migrate-continue", {"state": "pre-switchover"})
            info = q.poll("query-migrate", None,
                          until=lambda r: r.get("status") in ("completed", "failed", "cancelled"),
                          timeout=self.timeout)
            if info.get("status") != "completed":
                raise QMPError(f"memory save failed: {info.get('error-desc', info.get('status'))}",
                               sent="migrate-continue", received=info)
            self._wait_finalized(q)
            faults.point("capture-after-switchover")
            # A completed migration inactivates the block nodes (and leaves the run state
            # postmigrate, from which no later snapshot can start); `cont` activates them
            # again. QEMU 7.2 has no other way back, so a domain that was paused gets a
            # `cont` and at once a `stop`: its vCPUs may run for an instant, after the
            # snapshot's state was taken.
            q.execute("cont")
            resumed = True
            if not was_running:
                q.execute("stop")
            result.memory_save_ms = round((time.monotonic() - t0) * 1000, 3)
            t1 = time.monotonic()
            fsync_path(memory_file)  # QEMU does not sync what it wrote
            result.fsync_ms = round((time.monotonic() - t1) * 1000, 3)
            result.memory_bytes = memory_file.stat().st_size
        except BaseException:
            self._abort_migration(q)
            if disks_taken:
                self._undo_actions(q, actions)
            if was_running and not resumed:
                self._resume_quietly(q)
            raise

    def _wait_finalized(self, q: QMPClient) -> None:
        """`completed` can come while the run state is still finish-migrate, when a
        `cont` fails with "Migration is not finalized yet" (seen about 1 in 70)."""
        q.poll("query-status", None, until=lambda r: r.get("status") != "finish-migrate",
               timeout=30, interval=0.001)

    def _abort_migration(self, q: QMPClient) -> None:
        try:
            st = q.execute("query-migrate").get("status")
            if st in ("active", "pre-switchover", "device", "setup"):
                q.execute("migrate_cancel")
                q.poll("query-migrate", None,
                       until=lambda r: r.get("status") not in ("active", "pre-switchover",
                                                               "device", "cancelling", "setup"),
                       timeout=30)
        except DomsnapError:
            pass

    def _resume_quietly(self, q: QMPClient) -> None:
        try:
            if q.execute("query-status").get("status") != "running":
                q.execute("cont")
        except DomsnapError:
            pass

    def _undo_actions(self, q: QMPClient, actions: list[dict[str, Any]]) -> None:
        qmpblock.undo_actions(q, actions, timeout=self.timeout)

    def undo_disks(self, uuid: str, *, name: str, disks: list[DiskOp]) -> None:
        with self._qmp(uuid) as q:
            qmpblock.undo_disks(q, name=name, disks=disks, timeout=self.timeout)

    # ------------------------------------------------------------ delete / merge

    def delete_internal_live(self, uuid: str, *, name: str, path: str) -> None:
        with self._qmp(uuid) as q:
            qmpblock.delete_internal(q, name=name, path=path)

    def commit_live(self, uuid: str, *, top: str, base: str) -> None:
        with self._qmp(uuid) as q:
            qmpblock.commit(q, top=top, base=base, timeout=self.timeout)

    # ------------------------------------------------------------ start / stop

    def _argv(self, uuid: str, config: DomainConfig, *, paused: bool, incoming: bool) -> list[str]:
        d = self._dir(uuid)
        argv = [self.binary, "-name", f"{config.name},process=domsnap-{config.name}",
                "-uuid", uuid, "-machine", "q35"]
        for accel in self.accel:
            argv += ["-accel", accel]
        argv += ["-m", str(config.memory), "-smp", str(config.vcpus),
                 "-nodefaults", "-no-user-config", "-display", "none",
                 "-chardev", f"file,id=con0,path={d / 'console.log'},append=on",
                 "-serial", "chardev:con0",
                 "-qmp", f"unix:{self.qmp_path(uuid)},server=on,wait=off",
                 "-pidfile", str(d / "qemu.pid"), "-daemonize"]
        if config.kernel:
            argv += ["-kernel", config.kernel]
        if config.ramdisk:
            argv += ["-initrd", config.ramdisk]
        if config.extra:
            argv += ["-append", config.extra]
        for disk in config.disks:
            if disk.target is None or disk.devtype == "cdrom":
                continue
            ro = disk.access == "ro"
            fmt = disk.format
            if fmt not in ("qcow2", "raw"):  # never open an image as a format it is not
                raise InvalidInput(f"disk {disk.vdev}: format {fmt} is not supported by the "
                                   "qemu driver (qcow2 or raw)", field="disk")
            argv += ["-blockdev", json.dumps({"driver": "file", "filename": disk.target,
                                              "node-name": f"{disk.vdev}-file", "read-only": ro}),
                     "-blockdev", json.dumps({"driver": fmt, "file": f"{disk.vdev}-file",
                                              "node-name": f"{disk.vdev}-{fmt}", "read-only": ro}),
                     "-device", f"virtio-blk-pci,drive={disk.vdev}-{fmt},id={disk.vdev}"]
        if paused:
            argv.append("-S")
        if incoming:
            argv += ["-incoming", "defer"]
        return argv

    def start(self, uuid: str, config: DomainConfig, *, paused: bool,
              memory_file: Path | None = None) -> None:
        if self.pid(uuid):
            raise Refused(f"domain {config.name} is running already", domain=uuid)
        d = self._dir(uuid)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock = self.qmp_path(uuid)
        if len(str(sock).encode()) > 107:
            raise InvalidInput(f"QMP socket path {sock} is longer than a unix socket allows "
                               "(107 bytes): set a shorter DOMSNAP_RUN_DIR", field="run_dir")
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock.unlink(missing_ok=True)
        self._runstate(uuid, "paused")  # until it is known to run: never "shutoff" while alive
        self.runner(self._argv(uuid, config, paused=paused or memory_file is not None,
                               incoming=memory_file is not None), timeout=120)
        self.set_domain_config(uuid, config)
        if memory_file is None:
            self._runstate(uuid, "paused" if paused else "running")
            return
        try:
            with self._qmp(uuid, timeout=self.timeout) as q:
                fd = os.open(memory_file, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    q.send_fd(MEM_FD, fd)
                finally:
                    os.close(fd)
                q.execute("migrate-incoming", {"uri": f"fd:{MEM_FD}"})
                faults.point("restore-incoming")
                st = q.poll("query-status", None,
                            until=lambda r: r.get("status") != "inmigrate", timeout=self.timeout)
                if st.get("status") not in ("paused", "prelaunch", "postmigrate"):
                    raise QMPError(f"memory restore ended in state {st.get('status')}",
                                   sent="migrate-incoming", received=st)
                if not paused:
                    q.execute("cont")
            self._runstate(uuid, "paused" if paused else "running")
        except BaseException:
            self.destroy(uuid)
            raise

    def destroy(self, uuid: str) -> None:
        pid = self.pid(uuid)
        if pid is None:
            return
        try:
            with QMPClient(self.qmp_path(uuid), timeout=5) as q:
                q.execute("quit")
        except DomsnapError:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self.pid(uuid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.pid(uuid):
            os.kill(pid, signal.SIGKILL)
            while self.pid(uuid):
                time.sleep(0.02)
        self._runstate(uuid, "shutoff")
