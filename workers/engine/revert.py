"""Snapshot revert: the domain comes back in the exact state of the snapshot.

Internal disk snapshots are applied in place (``qemu-img snapshot -a``) when they
live in the image the domain uses now, or copied out into a new image
(``qemu-img convert -l``) when that image has since become a backing file. An
external one gets a fresh overlay on the snapshot's frozen image, so every later
snapshot stays intact (a new branch).
With a memory image the domain is restored from it; a disk-only snapshot leaves
the domain shut off unless asked to start it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, Refused, UnknownSnapshot
from schemas.config import DomainConfig
from schemas.models import DomainInfo, RevertRequest, SnapshotRecord
from workers.engine import capacity, jobs
from workers.engine.formats import known_formats, walk
from workers.engine.recovery import guarded
from workers.host import Host
from workers.hostio import faults

log = logging.getLogger("domsnap.revert")


def plan_revert(host: Host, req: RevertRequest, info: DomainInfo) -> dict[str, Any]:
    rec = host.store.get_snapshot(req.domain, req.name)
    current = host.driver.domain_config(req.domain)
    formats = known_formats(current, host.store.list_snapshots(req.domain))
    active = {d.vdev: d.target for d in current.disks}
    snapdir = host.settings.snapshots / req.domain
    new_paths: dict[str, str] = {}
    steps: list[dict[str, str]] = []
    for disk in rec.disks:
        if not os.path.exists(disk.file):
            raise Refused(f"snapshot {rec.name}: image {disk.file} of {disk.vdev} is missing")
        if disk.strategy == "lvm":
            origin = active.get(disk.vdev)
            if origin is None:
                raise Refused(f"snapshot {rec.name}: the domain has no disk {disk.vdev} now")
            steps.append({"op": "lvm-revert", "vdev": disk.vdev, "path": origin,
                          "snapshot": disk.file})
        elif disk.type == "internal" and active.get(disk.vdev) == disk.file:
            steps.append({"op": "apply", "vdev": disk.vdev, "path": disk.file})
            new_paths[disk.vdev] = disk.file
        elif disk.type == "internal":
            # The image is now a backing file: applying the snapshot in place would
            # corrupt every image above it, so copy the snapshot out into a new image.
            copy = snapdir / f"{rec.name}.{disk.vdev}.r{req.job_id[:8]}.qcow2"
            steps.append({"op": "copyout", "vdev": disk.vdev, "path": str(copy),
                          "source": disk.file})
            new_paths[disk.vdev] = str(copy)
        else:
            # the new overlay's backing format is the frozen image's real one (raw for
            # a raw disk's first external snapshot, qcow2 for a later one)
            overlay = snapdir / f"{rec.name}.{disk.vdev}.r{req.job_id[:8]}.qcow2"
            steps.append({"op": "overlay", "vdev": disk.vdev, "path": str(overlay),
                          "backing": disk.file,
                          "format": formats.get(disk.file, disk.format)})
            new_paths[disk.vdev] = str(overlay)
    if not rec.disk_only and (not rec.memory_file or not os.path.exists(rec.memory_file)):
        raise Refused(f"snapshot {rec.name}: its memory image {rec.memory_file} is missing")
    capacity.check_revert(host.settings.space_reserve_mb, steps)
    config = _config_after(rec, current, new_paths)
    final: str
    if req.start is not None:
        final = req.start
    elif rec.disk_only:
        final = "shutoff"
    else:
        final = "paused" if rec.domain_state == "paused" else "running"
    return {"steps": steps, "config": config.model_dump(mode="json"), "final": final,
            "memory_file": None if rec.disk_only else rec.memory_file,
            "was": info.state, "old_config": current.model_dump(mode="json")}


def _config_after(rec: SnapshotRecord, current: DomainConfig,
                  new_paths: dict[str, str]) -> DomainConfig:
    """The snapshot's config (memory, vcpus, devices as they were) with each disk
    pointing at its reverted image; disks the snapshot did not cover keep today's image."""
    now = {d.vdev: d for d in current.disks}
    disks = []
    for d in rec.domain_config.disks:
        if d.vdev in new_paths:
            # internal snapshots live in qcow2, external overlays are qcow2
            disks.append(d.model_copy(update={"target": new_paths[d.vdev], "format": "qcow2"}))
        else:
            disks.append(now.get(d.vdev, d))
    return rec.domain_config.model_copy(update={"disks": disks, "uuid": current.uuid})


PHASES = ("stop", "disks", "switch", "start", "commit")


@guarded("revert")
def run_revert(host: Host, req: RevertRequest, plan: dict[str, Any]) -> dict[str, Any]:
    return carry_out_revert(host, req, plan, done=None)


def carry_out_revert(host: Host, req: RevertRequest, plan: dict[str, Any], *,
                     done: str | None, why: str | None = None) -> dict[str, Any]:
    """The revert, from the phase after ``done`` (None: from the start). The journal
    notes each phase as it ends, so a worker killed anywhere is carried forward from
    there (start-up recovery, a redelivered step, the pause guard): every phase is
    safe to run again. If it cannot be carried forward the job fails and the domain is
    left in a defined state: on its old images if the switch had not happened (the
    pre-revert domain was stopped already), else shut off; never paused half-restored.
    """
    emit = jobs.progress_for(host, req.job_id)
    config = DomainConfig.model_validate(plan["config"])
    first = 0 if done not in PHASES else PHASES.index(str(done)) + 1
    switched = first > PHASES.index("switch")
    try:
        jobs.check_cancel(host, req, "before it touched the domain")
        host.files.domain_dir(req.domain)
        for phase in PHASES[first:]:
            if phase == "stop" and host.driver.is_active(req.domain):
                emit("stop", "stopping the domain")
                host.driver.destroy(req.domain)
            elif phase == "disks":
                _disks(host, req, plan, emit)
            elif phase == "switch":
                host.driver.set_domain_config(req.domain, config)
                switched = True  # from here the domain's images are the reverted ones
            elif phase == "start":
                _start(host, req, plan, config, emit)
            elif phase == "commit":
                host.store.put_snapshots(req.domain, [], current=req.name,
                                         fence=jobs.fence_of(req, plan))
                _drop_abandoned(host, req, DomainConfig.model_validate(plan["old_config"]),
                                config)
            _noted(host, req, phase)
            faults.point(f"revert-after-{phase}")
        result: dict[str, Any] = {"name": req.name, "state": plan["final"],
                                  "disks": {s["vdev"]: s["path"] for s in plan["steps"]}}
        jobs.succeed_carried(host, req, result, why)
        return result
    except BaseException as exc:
        _after_failure(host, req, plan, switched=switched)
        jobs.fail_carried(host, req, exc, why)
        if why is None:
            raise
        return {}


def _noted(host: Host, req: RevertRequest, phase: str) -> None:
    entry = host.files.read_journal(req.job_id)
    if entry is not None:
        host.files.write_journal(req.job_id, {**entry, "phase": phase})


def _disks(host: Host, req: RevertRequest, plan: dict[str, Any], emit: jobs.Progress) -> None:
    """Every disk step; each is idempotent (its image made afresh, a snapshot applied
    again to a disk nobody ran on since)."""
    for step in plan["steps"]:
        if step["op"] == "apply":
            emit("disk", f"{step['vdev']}: applying internal snapshot {req.name}")
            host.img.snapshot_apply(step["path"], req.name)
        elif step["op"] == "lvm-revert":
            emit("disk", f"{step['vdev']}: merging LVM snapshot {step['snapshot']} back "
                 f"into {step['path']}")
            origin = host.lvm.probe(step["path"])
            if origin is None:
                raise Refused(f"{step['vdev']}: {step['path']} is no longer an LVM volume")
            try:
                host.lvm.revert(origin, req.name)
            except UnknownSnapshot:  # merged by an attempt cut short: take it again
                host.lvm.create_snapshot(origin, req.name)
        elif step["op"] == "copyout":
            emit("disk", f"{step['vdev']}: copying internal snapshot {req.name} out of "
                 f"{step['source']} (now a backing image)")
            Path(step["path"]).unlink(missing_ok=True)
            host.img.copy_out_snapshot(step["source"], req.name, step["path"])
        else:
            emit("disk", f"{step['vdev']}: new overlay on {step['backing']}")
            Path(step["path"]).unlink(missing_ok=True)
            host.img.create(step["path"], fmt="qcow2", backing=step["backing"],
                            backing_fmt=step["format"])


def _start(host: Host, req: RevertRequest, plan: dict[str, Any], config: DomainConfig,
           emit: jobs.Progress) -> None:
    final = plan["final"]
    if final == "shutoff":
        return
    if host.driver.is_active(req.domain):
        # A start cut short (recovery): a restore that completed is kept and brought to
        # the final state (never restored twice: the guest may have run since); one
        # still loading (QEMU ``inmigrate``) is ended, and the start is done afresh.
        if host.driver.resume_after_crash(req.domain, state=final) == final:
            host.files.clear_pausing(req.domain, req.job_id)
            return
        host.driver.destroy(req.domain)
    # the restore is the pause of a revert: its own budget from now
    host.files.mark_pausing(req.domain, req.job_id, budget_s=jobs.budget_for(host, plan))
    if plan["memory_file"]:
        emit("restore", "restoring memory")
        host.driver.start(req.domain, config, paused=final == "paused",
                          memory_file=Path(plan["memory_file"]))
    else:
        emit("start", "starting the domain")
        host.driver.start(req.domain, config, paused=final == "paused")
    host.files.clear_pausing(req.domain, req.job_id)


def _after_failure(host: Host, req: RevertRequest, plan: dict[str, Any], *,
                   switched: bool) -> None:
    """Before the switch: the images this revert made go and the old config comes back.
    After it: the domain stays on the reverted images, stopped if it is not running."""
    try:
        if not switched:  # never pull images from under a domain that may run on them
            for step in plan["steps"]:
                if step["op"] in ("copyout", "overlay"):
                    Path(step["path"]).unlink(missing_ok=True)
            host.driver.set_domain_config(req.domain,
                                          DomainConfig.model_validate(plan["old_config"]))
        elif host.driver.is_active(req.domain) and \
                host.driver.domain_info(req.domain).state != plan["final"]:
            host.driver.destroy(req.domain)
    except Exception as exc:  # noqa: BLE001 - the job fails with the first error anyway
        log.error("revert %s: cleanup after failure: %s", req.job_id, exc)


def _drop_abandoned(host: Host, req: RevertRequest, old: DomainConfig,
                    new: DomainConfig) -> None:
    """The images the domain wrote to before the revert hold state the revert discards:
    remove each one domsnap made that no snapshot refers to (never a user's image)."""
    records = host.store.list_snapshots(req.domain)
    formats = known_formats(new, records)
    keep = {d.target for d in new.disks if d.target}
    for rec in records:
        keep.update(p for d in rec.disks for p in (d.file, d.overlay) if p)
    ours = host.settings.snapshots.resolve()
    doomed = [d.target for d in old.disks if d.target and d.target not in keep
              and ours in Path(d.target).resolve().parents]
    if not doomed:
        return
    below: set[str] = set()  # every image a kept one reads through
    for p in keep:
        fmt = formats.get(p)
        if fmt is None or not os.path.exists(p):
            continue
        try:
            below.update(q for q, _ in walk(host.img, p, fmt, formats))
        except DomsnapError:
            return  # a chain domsnap cannot read: remove nothing rather than guess
    for path in doomed:
        if path not in below:
            Path(path).unlink(missing_ok=True)
