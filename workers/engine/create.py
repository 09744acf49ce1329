"""Snapshot create: plan (validate everything first), capture, commit, roll back.

Live path (running or paused domain): one driver call takes memory and all
disks with the guest paused as briefly as the hypervisor allows. Offline path
(shut-off domain): one task per disk in parallel, then :func:`finish_offline`.
Nothing becomes visible before every part exists; a failure removes every
part already made.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, InvalidInput, OperationFailed, Refused, SnapshotExists
from schemas.config import DomainConfig
from schemas.models import CreateRequest, DiskChoice, DiskSnapshot, DomainInfo, SnapshotRecord
from workers.drivers.base import DiskOp, LiveResult
from workers.engine import capacity, jobs
from workers.engine.diskops import take_offline, undo_offline
from workers.engine.formats import OVERLAY_BASES
from workers.engine.recovery import guarded, job_lock, remove_parts
from workers.host import Host
from workers.hostio import faults
from workers.hostio.paths import confined


def plan_create(host: Host, req: CreateRequest, info: DomainInfo) -> dict[str, Any]:
    """Check that the domain can take this snapshot; return the plan. Touches nothing."""
    if host.files.sidecar_path(req.domain, req.name).exists():
        raise SnapshotExists(f"snapshot {req.name!r} already exists on {info.name} (sidecar)",
                             name=req.name)
    config = host.driver.domain_config(req.domain)
    active = info.state in ("running", "paused")
    by_vdev = {d.vdev: d for d in config.disks}
    roots = host.settings.allowed_roots
    snapdir = host.settings.snapshots / req.domain
    disks: list[DiskOp] = []
    chosen = req.disks if req.disks is not None else [
        DiskChoice(vdev=d.vdev) for d in config.disks if d.writable and d.target]
    if not chosen:
        raise InvalidInput(f"domain {info.name} has no writable disk to snapshot", field="disks")
    seen: set[str] = set()
    wanted: dict[str, str | None] = {}  # vdev -> the target the request named
    for i, c in enumerate(chosen):
        spec = by_vdev.get(c.vdev)
        if spec is None:
            raise InvalidInput(f"disks[{i}].vdev: domain {info.name} has no disk {c.vdev}",
                               field=f"disks[{i}].vdev")
        if c.vdev in seen:
            raise InvalidInput(f"disks[{i}].vdev: {c.vdev} listed twice", field=f"disks[{i}].vdev")
        seen.add(c.vdev)
        if not spec.writable or spec.target is None:
            raise InvalidInput(f"disks[{i}].vdev: {c.vdev} is read-only or a cdrom",
                               field=f"disks[{i}].vdev")
        kind = c.type or req.type
        if kind == "internal":
            if spec.format != "qcow2":
                raise InvalidInput(
                    f"disks[{i}]: {c.vdev} is {spec.format}: only qcow2 images have internal "
                    "snapshots (ask for an external one)", field=f"disks[{i}].type")
            if c.target:
                raise InvalidInput(f"disks[{i}].target: an internal snapshot has no target",
                                   field=f"disks[{i}].target")
        elif c.format not in (None, "qcow2"):
            raise InvalidInput(f"disks[{i}].format: external overlays are qcow2",
                               field=f"disks[{i}].format")
        elif spec.format not in OVERLAY_BASES and spec.backendtype != "phy":
            raise Refused(f"disks[{i}]: {c.vdev} is {spec.format}: external snapshots go on "
                          "qcow2 or raw images only", vdev=c.vdev)
        wanted[c.vdev] = c.target
        disks.append(DiskOp(vdev=c.vdev, path=spec.target, format=spec.format,
                            type=kind, backend=spec.backendtype))
    strategies = host.driver.disk_strategies(req.domain, disks, active=active)
    for i, (op, strategy) in enumerate(zip(disks, strategies, strict=True)):
        target: str | None = None
        if strategy == "lvm":
            lv = host.lvm.probe(op.path)
            if wanted[op.vdev] or lv is None:
                raise InvalidInput(f"disks[{i}].target: {op.vdev} gets an LVM snapshot in its "
                                   "own volume group; it takes no target",
                                   field=f"disks[{i}].target")
            target = host.lvm.snapshot_path(lv, req.name)
        elif op.type == "external":
            target = str(confined(wanted[op.vdev] or str(snapdir / f"{req.name}.{op.vdev}.qcow2"),
                                  roots, field=f"disks[{i}].target"))
        disks[i] = replace(op, strategy=strategy, target=target)
    targets = [d.target for d in disks if d.target]
    if len(set(targets)) != len(targets):
        raise InvalidInput("disks: two disks share one external target", field="disks")
    memory: str | None = None
    if not req.disk_only:
        if not active:
            raise InvalidInput(f"domain {info.name} is shut off: it has no memory to save; "
                               "use --disk-only", field="disk_only")
        memory = str(confined(req.memory_file or str(snapdir / f"{req.name}.save"), roots,
                              field="memory_file"))
    plan = {"mode": "live" if active else "offline", "memory_file": memory,
            "domain_state": info.state, "config": config.model_dump(mode="json"),
            "disks": [d.__dict__ for d in disks]}
    capacity.check_create(host.settings.space_reserve_mb, config.memory, plan)
    return plan


def _ops(plan: dict[str, Any]) -> list[DiskOp]:
    return [DiskOp(**d) for d in plan["disks"]]


def resumed(host: Host, job_id: str, live: LiveResult) -> None:
    """The ``resumed`` progress event; its data places the pause in time (epoch seconds
    of QEMU's STOP and RESUME, when the driver has them) and carries the capture's own
    timings (what bench/hops.py breaks down). Best effort, as every event."""
    data = {k: v for k, v in (("pause_ms", live.pause_ms), ("stopped_at", live.stopped_at),
                              ("resumed_at", live.resumed_at),
                              ("memory_save_ms", live.memory_save_ms),
                              ("fsync_ms", live.fsync_ms), ("disks_ms", live.disks_ms))
            if v is not None}
    try:
        host.store.add_event(job_id, "resumed",
                             f"domain back to {live.domain_state}; paused {live.pause_ms} ms",
                             data=data)
    except DomsnapError:
        pass


@guarded("capture")
def run_live(host: Host, req: CreateRequest, plan: dict[str, Any]) -> dict[str, Any]:
    """Memory + all disks of a running/paused domain in one driver call, then commit."""
    emit = jobs.progress_for(host, req.job_id)
    memory = Path(plan["memory_file"]) if plan["memory_file"] else None
    disks = _ops(plan)
    captured = False
    try:
        jobs.check_cancel(host, req, "before the capture")
        host.files.domain_dir(req.domain)  # memory file, default overlays, sidecar
        emit("capture", f"snapshotting {len(disks)} disk(s)" +
             (" and memory" if memory else ""))
        live = host.driver.capture(req.domain, name=req.name, memory_file=memory, disks=disks,
                                   progress=emit)
        captured = True
        host.files.clear_pausing(req.domain, req.job_id)
        resumed(host, req.job_id, live)
        jobs.check_cancel(host, req, "after the capture; its disk snapshots were removed")
        # all disks went in one atomic transaction: each took the transaction's time
        result = commit(host, req, plan, disk_ms={d.vdev: live.disks_ms for d in disks},
                        pause_ms=live.pause_ms,
                        memory_save_ms=live.memory_save_ms, memory_bytes=live.memory_bytes,
                        domain_state=live.domain_state, memory=_memory_info(live))
    except BaseException as exc:
        if not captured and not _still_active(host, req.domain):
            # the hypervisor died under the capture (its QEMU killed after the disk
            # transaction): the driver could not undo its part, so do it offline
            remove_parts(host, req, plan)
        else:
            _rollback(host, req, plan, live_taken=captured)
        jobs.fail(host, req, exc)
        raise
    # Past this point the snapshot is ready: a failure to report it must not undo it.
    jobs.succeed(host, req, result)
    return result


def _still_active(host: Host, uuid: str) -> bool:
    try:
        return host.driver.is_active(uuid)
    except DomsnapError:
        return False


def run_offline_disk(host: Host, req: CreateRequest, disk: dict[str, Any]) -> dict[str, Any]:
    """One disk of a shut-off domain. Returns a result dict, never raises for disk errors:
    the finishing step sees every disk's outcome and rolls back the ones that worked.

    Guarded like every continuation, but the disks of one job run in parallel: each
    holds the job's lock shared (the finishing step and recovery hold it exclusive,
    so they never run while a disk is being taken) and runs only while the job is
    still running with its journal at ``admitted``: a disk step delivered after its
    job ended (the worker died, recovery failed it) does nothing. A disk step cut
    short before (its start is noted on the host) is undone, then taken again; a disk
    that already held a snapshot of that name made behind domsnap's back is refused."""
    op = DiskOp(**disk)
    with job_lock(host, req.job_id, shared=True):
        entry = host.files.read_journal(req.job_id)
        try:
            state = host.store.get_job(req.job_id).state
        except DomsnapError as exc:
            return {"vdev": op.vdev, "ok": False, "error": exc.message}
        if state != "running" or entry is None or entry.get("step") != "admitted":
            return {"vdev": op.vdev, "ok": False, "skipped": True,
                    "error": f"the job is {state}: this disk step came too late and did nothing"}
        return _offline_disk(host, req, op)


def _offline_disk(host: Host, req: CreateRequest, op: DiskOp) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        if host.driver.is_active(req.domain):
            raise Refused("the domain started while its disks were being snapshotted offline")
        jobs.check_cancel(host, req, "before this disk")
        host.files.domain_dir(req.domain)
        if not host.files.begin_disk(req.job_id, op.vdev):
            undo_offline(host.img, host.lvm, op, req.name)  # what a cut-short attempt left
        faults.point("offline-disk")
        take_offline(host.img, host.lvm, op, req.name)
        ms = round((time.monotonic() - t0) * 1000, 3)
        jobs.progress_for(host, req.job_id)("disk", f"{op.vdev}: {op.type} snapshot in {ms} ms")
        return {"vdev": op.vdev, "ok": True, "ms": ms}
    except DomsnapError as exc:
        return {"vdev": op.vdev, "ok": False, "error": exc.message}
    except Exception as exc:  # noqa: BLE001 - reported to the finishing step, which fails the job
        return {"vdev": op.vdev, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


@guarded("finish")
def finish_offline(host: Host, req: CreateRequest, plan: dict[str, Any],
                   results: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        jobs.check_cancel(host, req, "after its disk steps; they were rolled back")
        failed = [r for r in results if not r.get("ok")]
        if failed:
            raise OperationFailed("; ".join(f"{r['vdev']}: {r['error']}" for r in failed))
        result = commit(host, req, plan, disk_ms={r["vdev"]: r["ms"] for r in results},
                        pause_ms=None, memory_save_ms=None, memory_bytes=None,
                        domain_state="shutoff")
    except BaseException as exc:
        done = {r["vdev"] for r in results if r.get("ok")}
        _rollback(host, req, plan, live_taken=False, offline_done=done)
        jobs.fail(host, req, exc)
        raise
    jobs.succeed(host, req, result)
    return result


def _memory_info(live: LiveResult) -> dict[str, Any]:
    """How the memory was saved, for the record and the job result (xl: live or save)."""
    return {"memory_strategy": live.memory_strategy, "memory_fallback": live.memory_fallback,
            "memory_page_records": live.memory_page_records,
            "memory_rounds": live.memory_rounds}


def commit(host: Host, req: CreateRequest, plan: dict[str, Any], *, disk_ms: dict[str, float],
           pause_ms: float | None, memory_save_ms: float | None, memory_bytes: int | None,
           domain_state: str, memory: dict[str, Any] | None = None) -> dict[str, Any]:
    """All parts exist: point the domain at new overlays, write sidecar then Redis.

    The Redis write is the moment the snapshot becomes visible (``ready``); the
    caller reports success only after it."""
    config = DomainConfig.model_validate(plan["config"])
    disks = _ops(plan)
    host.driver.set_domain_config(req.domain, config_after_create(config, disks))
    snaps = []
    for op in disks:
        lvm = op.strategy == "lvm"  # the snapshot volume holds the frozen state
        size = _size(op.target if op.type == "external" else op.path)
        overlay = None if lvm else op.target
        # format: the frozen (or internal-holding) image's; the overlay is always qcow2
        snaps.append(DiskSnapshot(vdev=op.vdev, type=op.type, format=op.format,  # type: ignore[arg-type]
                                  file=op.target if lvm and op.target else op.path,
                                  overlay=overlay, overlay_format="qcow2" if overlay else None,
                                  strategy=op.strategy or None,  # type: ignore[arg-type]
                                  duration_ms=disk_ms.get(op.vdev, 0.0), size_bytes=size))
    record = SnapshotRecord(
        name=req.name, domain=req.domain, domain_name=config.name, host=host.name,
        driver=host.driver.name, description=req.description, created_at=req.submitted_at
        or time.time(), domain_state=domain_state,  # type: ignore[arg-type]
        disk_only=plan["memory_file"] is None, memory_file=plan["memory_file"],
        memory_bytes=memory_bytes, memory_save_ms=memory_save_ms, pause_ms=pause_ms,
        **(memory or {}), parent=host.store.current(req.domain), disks=snaps, domain_config=config,
        job_id=req.job_id, policy=req.policy)
    host.files.write_sidecar(record)
    faults.point("commit-sidecar")
    host.store.commit_snapshot(record, job_id=req.job_id, fence=jobs.fence_of(req, plan))
    result = {"name": record.name, "pause_ms": pause_ms, "memory_save_ms": memory_save_ms,
              "memory_bytes": memory_bytes, **(memory or {}), "disk_only": record.disk_only,
              "disks": [s.model_dump(mode="json") for s in snaps]}
    return result


def config_after_create(config: DomainConfig, disks: list[DiskOp]) -> DomainConfig:
    """The domain config once ``disks`` are taken: each disk with an external overlay
    (not LVM: the origin volume goes on) now runs on that overlay, a qcow2 image,
    whatever the format of the image it froze (a raw disk's overlay opened as raw would
    be overwritten by the guest's first write)."""
    overlays = {o.vdev: o.target for o in disks
                if o.type == "external" and o.strategy != "lvm" and o.target}
    return config.model_copy(update={"disks": [
        d.model_copy(update={"target": overlays[d.vdev], "format": "qcow2"})
        if d.vdev in overlays else d for d in config.disks]})


def _size(path: str | None) -> int | None:
    try:
        return os.stat(path).st_size if path else None
    except OSError:
        return None


def _rollback(host: Host, req: CreateRequest, plan: dict[str, Any], *, live_taken: bool,
              offline_done: set[str] | None = None) -> None:
    """Remove every part of a failed create; the driver already undid its own transaction
    when capture itself failed, so here only parts of a finished capture are undone."""
    emit = jobs.progress_for(host, req.job_id)
    disks = _ops(plan)
    config = DomainConfig.model_validate(plan["config"])
    try:
        if live_taken:
            emit("rollback", "removing the disk snapshots already taken")
            host.driver.undo_disks(req.domain, name=req.name, disks=disks)
            host.driver.set_domain_config(req.domain, config)
        for op in disks:
            if offline_done is not None and op.vdev in offline_done:
                undo_offline(host.img, host.lvm, op, req.name)
    except DomsnapError as exc:
        emit("rollback", f"rollback incomplete: {exc.message}")
    finally:
        if plan["memory_file"]:
            Path(plan["memory_file"]).unlink(missing_ok=True)
        host.files.remove_sidecar(req.domain, req.name)
