"""The xl driver: Xen dom0 hosts, through the real ``xl`` binary.

Every ``xl``, ``qemu-img`` and ``lvm`` call goes through the injected runner
(timeout, ``LC_ALL=C``, errors keep argv/exit code/stderr). Domains are found in
``xl list -l``; their configs live in a host-side :class:`Registry` so shut-off
domains stay known.

Disk strategies (decided per disk when an operation is planned, reported in
the job result):

* ``qmp``: the domain's device model serves the disk (qdisk backend; its QMP
  socket is ``<xen run dir>/qmp-libxl-<domid>``): every such disk in one atomic
  ``transaction`` while the domain is paused (after ``xl save -p``, or briefly
  with ``xl pause`` for a disk-only snapshot). The socket serves one client and
  libxl uses it too: connect, transact, disconnect, and never while an ``xl``
  command runs.
* ``qemu-img``: the domain is shut off; the engine runs one task per disk.
* ``save-restore``: no QMP socket serves the disk (a stub-domain device model):
  ``xl save`` (the domain stops), ``qemu-img`` on every disk in parallel, then
  ``xl restore`` with a config naming the right images.
* ``lvm``: a raw volume on the blkback (``phy``) backend: an LVM snapshot while
  the domain is paused. Anything else on blkback is refused.

``qemu-img`` never runs on an image a running domain's backend holds: Xen's QEMU
does not lock images, so the change would be silently lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from domsnap.errors import CommandFailed, DomsnapError, Refused, UnknownDomain
from schemas.config import DomainConfig
from schemas.models import DiskInfo, DomainInfo
from workers.block import qmpblock
from workers.block.blocknodes import served_strategies, snapshot_actions
from workers.block.lvm import Lvm
from workers.block.qemu_img import QemuImg
from workers.block.qmp import QMPClient
from workers.drivers import xllive, xlsave
from workers.drivers.base import Capabilities, DiskOp, Driver, LiveResult, Progress
from workers.drivers.xlmonitor import MonitorMarks, Watcher
from workers.drivers.xlparse import XlDomain, parse_list_long, parse_list_rows
from workers.drivers.xlregistry import Entry, Registry
from workers.drivers.xlrestart import adopt, push_stored_config
from workers.drivers.xlsave import wait_for_saves
from workers.drivers.xlwindow import Mark, WindowMarks, retarget, touch_private
from workers.engine.diskops import take_offline, undo_offline
from workers.hostio import faults
from workers.hostio.fsutil import fsync_path
from workers.hostio.runner import Runner

log = logging.getLogger("domsnap.xl")

INVALID_DOMAIN = "is an invalid domain identifier"  # a name xl does not know
NO_SUCH_DOMID = "does not exist"  # `xl list N`: "Error: Domain 'N' does not exist."
NO_SUSPEND = ("acknowledge suspend", "guest didn't suspend", "did not suspend",
              "suspend request")


class XlDriver(Driver):
    name = "xl"
    capabilities = Capabilities(live_memory=True, live_disks=True, internal=True,
                                external=True, revert_memory=True, live_merge=True)

    def __init__(self, state_dir: Path, runner: Runner, *, img: QemuImg, lvm: Lvm,
                 binary: str = "xl", xen_run_dir: Path = Path("/var/run/xen"),
                 timeout: float = 600.0, qmp_timeout: float = 30.0,
                 xen_python_dir: Path | None = None, memory_strategy: str = "live",
                 space_reserve_mb: int = 0,
                 dump_dir: Path = Path("/var/lib/xen/dump")) -> None:
        self.registry = Registry(state_dir)
        self.monitors = MonitorMarks(state_dir / "xl" / "nomonitor")
        self.watcher = Watcher(self, self.monitors, dump_dir)
        self.memory_strategy, self.space_reserve_mb = memory_strategy, space_reserve_mb
        self.live_dir = state_dir / "xl" / "live"  # the live receivers' requests and reports
        self.xen_python_dir = xen_python_dir
        self.scratch = state_dir / "xl" / "scratch"
        self.windows = WindowMarks(state_dir / "xl" / "windows")
        self.runner = runner
        self.img = img
        self.lvm = lvm
        self.binary = binary
        self.xen_run_dir = xen_run_dir
        self.timeout = timeout
        self.qmp_timeout = qmp_timeout

    # ------------------------------------------------------------ xl

    def _xl(self, *args: str, timeout: float | None = None, outlive: bool = False) -> str:
        """One xl call; ``outlive``: one that must not die with the worker (save, restore,
        create: :mod:`workers.drivers.xlsave`)."""
        return self.runner([self.binary, *args], timeout=timeout or self.timeout,
                           outlive=outlive).stdout

    def _lookup(self, uuid: str) -> tuple[int, str] | None:
        """``(domid, state)`` of the running domain ``uuid``, or None when xl does not
        have it (shut off, or another domain now has its name)."""
        entry = self.registry.get(uuid)
        try:
            doms = parse_list_long(self._xl("list", "-l", entry.config.name, timeout=60))
        except CommandFailed as exc:
            if INVALID_DOMAIN in exc.stderr:
                return None
            raise
        dom = next((d for d in doms if d.uuid == uuid), None)
        if dom is None:
            return None
        if dom.domid != entry.domid:
            self._sync(dom)  # a new instance (e.g. rebuilt by a reboot): checked at once
        try:
            rows = self._list_states(self._xl("list", str(dom.domid), timeout=60))
        except CommandFailed as exc:
            if INVALID_DOMAIN in exc.stderr or NO_SUCH_DOMID in exc.stderr:
                return None  # gone between the two calls
            raise
        # a row xl printed but domsnap cannot read: the domain exists, its state is unknown
        return (dom.domid, rows.get(dom.domid, "unknown"))

    @staticmethod
    def _list_states(text: str) -> dict[int, str]:
        """domid -> state from an ``xl list`` table; rows that do not parse are logged and
        left out (their domains then count as ``unknown``, which every operation refuses)."""
        rows, bad = parse_list_rows(text)
        for exc in bad:
            log.warning("skipping an `xl list` row: %s", exc)
        return {r.domid: r.state for r in rows}

    def _running(self, uuid: str) -> tuple[int, str]:
        found = self._lookup(uuid)
        if found is None:
            raise Refused(f"domain {uuid} is not running", domain=uuid)
        return found

    def qmp_path(self, domid: int) -> Path:
        return self.xen_run_dir / f"qmp-libxl-{domid}"

    @contextmanager
    def _qmp(self, domid: int) -> Iterator[QMPClient]:
        """The device model's socket, held only for the work inside the block."""
        with QMPClient(self.qmp_path(domid), timeout=self.qmp_timeout) as q:
            yield q

    # ------------------------------------------------------------ inventory

    def _sync(self, dom: XlDomain) -> Entry | None:
        """Register a domain seen in xl (:func:`workers.drivers.xlrestart.adopt`)."""
        return adopt(self.registry, self.img, dom)

    def _info(self, uuid: str, config: DomainConfig, state: str,
              domid: int | None) -> DomainInfo:
        disks = [DiskInfo(vdev=d.vdev, path=d.target, format=d.format, writable=d.writable,
                          cdrom=d.devtype == "cdrom", backend=d.backendtype or "qdisk")
                 for d in config.disks]
        return DomainInfo(uuid=uuid, name=config.name, state=state,  # type: ignore[arg-type]
                          disks=disks, domid=domid)

    def list_domains(self) -> list[DomainInfo]:
        doms = [d for d in parse_list_long(self._xl("list", "-l", timeout=60)) if d.domid != 0]
        states = self._list_states(self._xl("list", timeout=60))
        out: dict[str, DomainInfo] = {}
        for dom in doms:
            try:
                entry = self._sync(dom)
            except (DomsnapError, ValueError):  # one odd domain must not hide the rest
                continue
            if entry is not None and dom.uuid is not None:
                state = "unknown" if entry.diverged else states.get(dom.domid, "unknown")
                out[dom.uuid] = self._info(dom.uuid, entry.config, state, dom.domid)
        for uuid in self.registry.uuids():
            if uuid not in out and (entry2 := self.registry.find(uuid)) is not None:
                out[uuid] = self._info(uuid, entry2.config, "shutoff", None)
        return sorted(out.values(), key=lambda i: i.name)

    def domain_info(self, uuid: str) -> DomainInfo:
        entry = self.registry.find(uuid)
        if entry is None:  # not seen yet: a full listing registers it if xl runs it
            for info in self.list_domains():
                if info.uuid == uuid:
                    return info
            raise UnknownDomain(f"no domain {uuid} on this host", domain=uuid)
        found = self._lookup(uuid)
        if found is None:
            return self._info(uuid, entry.config, "shutoff", None)
        entry = self.registry.get(uuid)  # _lookup registered this instance
        if entry.diverged and entry.domid == found[0]:
            raise Refused(entry.diverged, domain=uuid)
        return self._info(uuid, entry.config, found[1], found[0])

    def domain_config(self, uuid: str) -> DomainConfig:
        return self.registry.get(uuid).config

    def set_domain_config(self, uuid: str, config: DomainConfig) -> None:
        """Record ``config``; if the domain runs, push it to xl too, so that a reboot
        rebuilds the domain on these images (:mod:`workers.drivers.xlrestart`)."""
        self.registry.set_config(uuid, config)
        found = self._lookup(uuid)
        if found is not None:
            push_stored_config(self._xl, self.registry, uuid, found[0], config)

    # ------------------------------------------------------------ run state

    def pause(self, uuid: str) -> None:
        self._xl("pause", str(self._running(uuid)[0]), timeout=60)

    def unpause(self, uuid: str) -> None:
        self._xl("unpause", str(self._running(uuid)[0]), timeout=60)

    def resume_after_crash(self, uuid: str, *, state: str) -> str:
        """A domain that a dead ``xl save`` left suspended (``---ss-``: ``xl unpause``
        cannot resume it) is resumed first, as libxl does after a failed save
        (:meth:`resume_suspended`); then ``xl unpause`` or ``xl pause`` to the wanted
        state."""
        found = self._lookup(uuid)
        if found is not None:  # an xl save or migrate that outlived its worker ends first
            wait_for_saves(self.binary, domid=found[0], timeout=self.timeout)
        xllive.clear_runs(self.live_dir, uuid)  # a dead worker's receiver request/report
        self.recover_windows(blocking=True)
        self.resume_suspended(uuid)
        return super().resume_after_crash(uuid, state=state)

    def recover_windows(self, *, blocking: bool) -> int:
        """Restore every domain that a save/restore window cut short left down (its
        RAM only in the window's file: :mod:`workers.drivers.xlwindow`). Returns how
        many such domains could not be restored yet (tried again next time)."""
        def restore(uuid: str, file: Path, paused: bool) -> None:
            self.start(uuid, self.registry.get(uuid).config, paused=paused, memory_file=file)

        return self.windows.restore_orphans(
            blocking=blocking, running=lambda u: self._lookup(u) is not None, restore=restore,
            wait=lambda f: wait_for_saves(self.binary, file=f, timeout=self.timeout))

    def windows_open(self) -> int:
        return self.windows.count()

    def monitor_lost(self, uuid: str, domid: int, cause: str) -> bool:
        """Call before anything suspends instance ``domid`` (``xl save``, ``xl migrate``):
        its ``xl create`` monitor exits at the suspend, so domsnap acts on its shutdowns
        from now on (:mod:`workers.drivers.xlmonitor`). Whether it had one until now."""
        return self.monitors.lost(uuid, domid, cause)

    def watch_shutdowns(self, *, busy: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The guard's round: the on_* action of every domain without a monitor."""
        return self.watcher.round(busy)

    def destroy(self, uuid: str) -> None:
        found = self._lookup(uuid)
        if found is not None:
            self._xl("destroy", str(found[0]), timeout=120)

    def start(self, uuid: str, config: DomainConfig, *, paused: bool,
              memory_file: Path | None = None) -> None:
        if self._lookup(uuid) is not None:
            raise Refused(f"domain {config.name} is running already", domain=uuid)
        cfg = config.model_copy(update={"uuid": uuid})
        path = self.registry.write_cfg(uuid, cfg)
        self.registry.set_config(uuid, cfg)  # before xl starts it: the inventory agrees
        flags = ["-p"] if paused else []
        if memory_file is not None:
            self._xl("restore", *flags, str(path), str(memory_file), outlive=True)
        else:
            self._xl("create", *flags, str(path), timeout=300, outlive=True)
        self.monitors.clear(uuid)  # a new instance, with the monitor xl just spawned
        found = self._lookup(uuid)
        with self.registry.locked():
            self.registry.put(uuid, Entry(config=cfg, domid=found[0] if found else None))

    # ------------------------------------------------------------ strategies

    def disk_strategies(self, uuid: str, ops: list[DiskOp], *, active: bool) -> list[str]:
        domid = self._running(uuid)[0] if active else None
        out = []
        for op in ops:
            if op.backend == "phy" or (op.format == "raw" and op.path.startswith("/dev/")):
                if op.type == "internal":
                    raise Refused(f"disk {op.vdev}: {op.path} is a raw volume: it has no "
                                  "internal snapshots")
                if self.lvm.probe(op.path) is None:
                    raise Refused(
                        f"disk {op.vdev}: {op.path} is on the blkback (phy) backend and is not "
                        "an LVM logical volume: domsnap snapshots such disks only through LVM")
                out.append("lvm")
            elif domid is None:
                out.append("qemu-img")
            elif op.backend in (None, "qdisk") and self._has_qmp(domid):
                out.append("qmp")
            else:
                out.append("save-restore")
        if domid is not None and "qmp" in out:
            out = self._check_served(domid, ops, out)
        return out

    def _check_served(self, domid: int, ops: list[DiskOp], out: list[str]) -> list[str]:
        """Ask the device model (one short QMP session) which images it serves
        (:func:`workers.block.blocknodes.served_strategies`)."""
        with self._qmp(domid) as q:
            return served_strategies(q.execute("query-named-block-nodes"), ops, out)

    # ------------------------------------------------------------ create

    def capture(self, uuid: str, *, name: str, memory_file: Path | None,
                disks: list[DiskOp], progress: Progress) -> LiveResult:
        domid, state = self._running(uuid)
        fallback = None
        if memory_file is not None:  # live (xl migrate) where it works: workers.drivers.xllive
            fallback = xllive.choose(self.memory_strategy, state, disks)
            try:
                if fallback is None:
                    return xllive.capture_live(self, uuid, domid, name=name, disks=disks,
                                               memory_file=memory_file, progress=progress)
            except xllive.LiveRefused as exc:
                fallback = exc.reason
        if any(op.strategy == "save-restore" for op in disks):
            result = self._capture_save_restore(uuid, domid, name=name, memory_file=memory_file,
                                                disks=disks, was_running=state == "running",
                                                progress=progress)
        else:
            result = self._capture_paused(uuid, domid, state, memory_file, name, disks, progress)
        if memory_file is not None:
            result.memory_strategy, result.memory_fallback = "save", fallback
        return result

    def _capture_paused(self, uuid: str, domid: int, state: str, memory_file: Path | None,
                        name: str, disks: list[DiskOp], progress: Progress) -> LiveResult:
        """``xl save -p`` (or ``xl pause``), the disks, ``xl unpause``."""
        was_running = state == "running"
        result = LiveResult(domain_state=state)
        t0 = time.monotonic()
        if memory_file is not None:
            self._save(uuid, domid, memory_file, ["-p"], was_running, progress)
            result.memory_save_ms = round((time.monotonic() - t0) * 1000, 3)
            result.memory_bytes = memory_file.stat().st_size
        elif was_running:
            self._xl("pause", str(domid), timeout=60)
        try:
            progress("disks", f"snapshotting {len(disks)} disk(s) while the domain is paused")
            result.disks_ms = self._take_paused(domid, name, disks)
        except BaseException:
            if memory_file is not None:
                memory_file.unlink(missing_ok=True)
            raise
        finally:
            if was_running:
                self._xl("unpause", str(domid), timeout=60)
            result.pause_ms = round((time.monotonic() - t0) * 1000, 3)
        return result

    def _save(self, uuid: str, domid: int, file: Path, flags: list[str], was_running: bool,
              progress: Progress) -> None:
        """``xl save``: the guest suspends, its RAM goes to ``file`` (0600)."""
        touch_private(file)
        progress("memory", "xl save: suspending the guest and writing its memory")
        if not was_running:
            # A paused guest cannot answer the suspend request (libxl would wait out its
            # timeout): it runs just until it has suspended; after the save it is paused
            # (-p) or restored paused.
            self._xl("unpause", str(domid), timeout=60)
        new = self.monitor_lost(uuid, domid, "xl save")  # its monitor exits at the suspend
        try:
            self._xl("save", *flags, str(domid), str(file), outlive=True)
        except CommandFailed as exc:
            file.unlink(missing_ok=True)
            if new and any(s in exc.stderr for s in NO_SUSPEND):
                self.monitors.clear(uuid, domid)  # never suspended: the monitor still runs
            self._resume_after_failed_save(uuid, was_running)
            if any(s in exc.stderr for s in NO_SUSPEND) or exc.returncode is None:
                err = CommandFailed(exc.argv, exc.returncode, exc.stderr, exc.stdout)
                err.message = ("the guest did not suspend in time; the domain was left "
                               f"{'running' if was_running else 'paused'} ({exc.message})")
                err.args = (err.message,)
                raise err from exc
            raise
        fsync_path(file)

    def _resume_after_failed_save(self, uuid: str, was_running: bool) -> None:
        """Put the domain back in the run state it had: libxl may leave it paused, and
        an ``xl save`` killed after the suspend leaves it suspended (``---ss-``, which
        no xl verb resumes; seen in the nested Xen lab), resumed as recovery does."""
        try:
            self.resume_suspended(uuid)
        except DomsnapError as exc:
            log.error("domain %s: resuming it after a failed save failed: %s", uuid, exc)
        try:
            found = self._lookup(uuid)
            if found is None:
                return
            if found[1] == "paused" and was_running:
                self._xl("unpause", str(found[0]), timeout=60)
            elif found[1] == "running" and not was_running:
                self._xl("pause", str(found[0]), timeout=60)
        except DomsnapError:
            pass

    def _take_paused(self, domid: int, name: str, disks: list[DiskOp]) -> float:
        """QMP disks in one transaction, then LVM volumes; all or nothing."""
        qmp_ops = [op for op in disks if op.strategy == "qmp"]
        lvm_ops = [op for op in disks if op.strategy == "lvm"]
        t0 = time.monotonic()
        actions: list[dict[str, Any]] = []
        if qmp_ops:
            with self._qmp(domid) as q:
                actions = snapshot_actions(q.execute("query-named-block-nodes"), name, qmp_ops)
                qmpblock.transaction(q, actions)
        made: list[DiskOp] = []
        try:
            for op in lvm_ops:
                take_offline(self.img, self.lvm, op, name)
                made.append(op)
        except BaseException:
            for op in made:
                self._quietly(undo_offline, self.img, self.lvm, op, name)
            if actions:
                with self._qmp(domid) as q:
                    qmpblock.undo_actions(q, actions, timeout=self.timeout)
            raise
        return round((time.monotonic() - t0) * 1000, 3)

    @staticmethod
    def _quietly(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except DomsnapError:
            pass

    # ------------------------------------------------------------ save/restore window

    def _window(self, uuid: str, domid: int, *, keep: Path | None, was_running: bool,
                work: Callable[[], DomainConfig], progress: Progress,
                undo: Callable[[], None] | None = None) -> None:
        """Stop the domain with ``xl save``, run ``work`` (offline disk work; it returns
        the config to restore with), then ``xl restore``. If ``work`` or that restore
        fails, ``undo`` runs and the domain is restored on its old config. ``keep``: the
        memory file to save into and keep; otherwise a scratch file, removed once the
        domain runs again (never before: it is then the only copy of the guest)."""
        file = keep or self.scratch / f"{uuid}.save"
        if keep is None:
            file.unlink(missing_ok=True)
        old = self.registry.get(uuid).config
        with self.windows.held(uuid, file=file, paused=not was_running,
                               keep=keep is not None) as mark:
            try:
                self._save(uuid, domid, file, [], was_running, progress)
            except BaseException:
                mark.phase("done")  # the domain was put back as it was (or never left)
                raise
            mark.phase("saved")
            faults.point("xl-window-saved")
            self._in_window(uuid, file, mark, old=old, was_running=was_running, keep=keep,
                            work=work, undo=undo, progress=progress)

    def _in_window(self, uuid: str, file: Path, mark: Mark, *, old: DomainConfig,
                   was_running: bool, keep: Path | None, work: Callable[[], DomainConfig],
                   undo: Callable[[], None] | None, progress: Progress) -> None:
        """The window from a completed save on: the work, then the restore (on the old
        images if the work or the restore on the new ones failed)."""
        restored = False

        def back_to_old() -> None:
            nonlocal restored
            try:
                self.start(uuid, old, paused=not was_running, memory_file=file)
                restored = True
                mark.phase("done")
            except DomsnapError as exc:
                log.error("domain %s could not be restored from %s: %s", uuid, file, exc)

        try:
            try:
                config = work()  # undoes its own partial work when it fails
            except BaseException:
                back_to_old()
                raise
            faults.point("xl-window-worked")
            progress("restore", "xl restore on the new images")
            mark.phase("restoring")
            try:
                self.start(uuid, config, paused=not was_running, memory_file=file)
                restored = True
                mark.phase("done")
            except BaseException:
                if undo is not None:
                    self._quietly(undo)
                back_to_old()
                raise
        finally:
            if keep is None and restored:
                file.unlink(missing_ok=True)

    def _capture_save_restore(self, uuid: str, domid: int, *, name: str,
                              memory_file: Path | None, disks: list[DiskOp],
                              was_running: bool, progress: Progress) -> LiveResult:
        result = LiveResult(domain_state="running" if was_running else "paused")
        t0 = time.monotonic()

        def work() -> DomainConfig:
            result.memory_save_ms = round((time.monotonic() - t0) * 1000, 3)
            t1 = time.monotonic()
            self._offline_parallel(name, disks)
            result.disks_ms = round((time.monotonic() - t1) * 1000, 3)
            return retarget(self.registry.get(uuid).config,
                             {op.path: (op.target, "qcow2") for op in disks
                              if op.type == "external" and op.strategy != "lvm" and op.target})

        def undo() -> None:
            for op in disks:
                self._quietly(undo_offline, self.img, self.lvm, op, name)

        try:
            self._window(uuid, domid, keep=memory_file, was_running=was_running, work=work,
                         progress=progress, undo=undo)
        except BaseException:
            if memory_file is not None and self._lookup(uuid) is not None:
                memory_file.unlink(missing_ok=True)  # the domain runs again without it
            raise
        if memory_file is not None:
            result.memory_bytes = memory_file.stat().st_size
        result.pause_ms = round((time.monotonic() - t0) * 1000, 3)
        return result

    def _offline_parallel(self, name: str, disks: list[DiskOp]) -> None:
        """Every disk at once (the domain is stopped); all or nothing."""
        with ThreadPoolExecutor(max_workers=max(1, len(disks))) as pool:
            futures = [(op, pool.submit(take_offline, self.img, self.lvm, op, name))
                       for op in disks]
            errors = [(op, f.exception()) for op, f in futures]
        failed = [e for _, e in errors if e is not None]
        if failed:
            for op, err in errors:
                if err is None:
                    self._quietly(undo_offline, self.img, self.lvm, op, name)
            raise failed[0]

    # ------------------------------------------------------------ undo / delete / merge

    def _has_qmp(self, domid: int) -> bool:
        return self.qmp_path(domid).exists()

    def undo_disks(self, uuid: str, *, name: str, disks: list[DiskOp]) -> None:
        domid, state = self._running(uuid)
        for op in disks:
            if op.strategy == "lvm":
                undo_offline(self.img, self.lvm, op, name)
        rest = [op for op in disks if op.strategy != "lvm"]
        if not rest:
            return
        if self._has_qmp(domid) and all(op.strategy == "qmp" for op in rest):
            with self._qmp(domid) as q:
                qmpblock.undo_disks(q, name=name, disks=rest, timeout=self.timeout)
            return

        def work() -> DomainConfig:
            moves: dict[str, tuple[str, str]] = {}
            for op in rest:
                if op.type == "external" and op.target:
                    self.img.commit(op.target)  # keep what the guest wrote since
                    Path(op.target).unlink(missing_ok=True)
                    moves[op.target] = (op.path, op.format)
                else:
                    self.img.snapshot_delete(op.path, name)
            return retarget(self.registry.get(uuid).config, moves)

        self._window(uuid, domid, keep=None, was_running=state == "running", work=work,
                     progress=lambda step, msg: None)

    def delete_internal_live(self, uuid: str, *, name: str, path: str) -> None:
        domid, state = self._running(uuid)
        if self._has_qmp(domid):
            with self._qmp(domid) as q:
                qmpblock.delete_internal(q, name=name, path=path)
            return

        def work() -> DomainConfig:
            self.img.snapshot_delete(path, name)
            return self.registry.get(uuid).config

        self._window(uuid, domid, keep=None, was_running=state == "running", work=work,
                     progress=lambda step, msg: None)

    def commit_live(self, uuid: str, *, top: str, base: str) -> None:
        domid, state = self._running(uuid)
        if self._has_qmp(domid):
            with self._qmp(domid) as q:
                qmpblock.commit(q, top=top, base=base, timeout=self.timeout)
            return

        def work() -> DomainConfig:
            # top is a qcow2 overlay; base is opened with the format top's header names
            _, base_fmt = self.img.backing(top, force_share=True)
            if base_fmt is None:
                raise Refused(f"{top} names its backing file {base} without a format; "
                              "domsnap does not guess one")
            self.img.commit(top)
            return retarget(self.registry.get(uuid).config, {top: (base, base_fmt)})

        self._window(uuid, domid, keep=None, was_running=state == "running", work=work,
                     progress=lambda step, msg: None)

    # ------------------------------------------------------------ a suspend left behind

    def resume_suspended(self, uuid: str) -> bool:
        """Resume a domain a dead save or migrate left ``---ss-`` (:mod:`.xlsave`)."""
        return xlsave.resume_suspended(self, uuid)
