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

import os
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, Refused
from schemas.config import DomainConfig
from schemas.models import DomainInfo, RevertRequest, SnapshotRecord
from workers.engine import jobs
from workers.engine.formats import known_formats, walk
from workers.engine.recovery import guarded
from workers.host import Host


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


@guarded("revert")
def run_revert(host: Host, req: RevertRequest, plan: dict[str, Any]) -> dict[str, Any]:
    emit = jobs.progress_for(host, req.job_id)
    config = DomainConfig.model_validate(plan["config"])
    made: list[str] = []
    switched = False
    try:
        host.files.domain_dir(req.domain)
        if host.driver.is_active(req.domain):
            emit("stop", "stopping the domain")
            host.driver.destroy(req.domain)
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
                host.lvm.revert(origin, req.name)
            elif step["op"] == "copyout":
                emit("disk", f"{step['vdev']}: copying internal snapshot {req.name} out of "
                     f"{step['source']} (now a backing image)")
                made.append(step["path"])
                host.img.copy_out_snapshot(step["source"], req.name, step["path"])
            else:
                emit("disk", f"{step['vdev']}: new overlay on {step['backing']}")
                host.img.create(step["path"], fmt="qcow2", backing=step["backing"],
                                backing_fmt=step["format"])
                made.append(step["path"])
        host.driver.set_domain_config(req.domain, config)
        switched = True  # from here the domain's images are the reverted ones
        final = plan["final"]
        if plan["memory_file"] and final != "shutoff":
            emit("restore", "restoring memory")
            host.driver.start(req.domain, config, paused=final == "paused",
                              memory_file=Path(plan["memory_file"]))
        elif final != "shutoff":
            emit("start", "starting the domain")
            host.driver.start(req.domain, config, paused=final == "paused")
        host.store.put_snapshots(req.domain, [], current=req.name)
        _drop_abandoned(host, req, DomainConfig.model_validate(plan["old_config"]), config)
        result = {"name": req.name, "state": final,
                  "disks": {s["vdev"]: s["path"] for s in plan["steps"]}}
        jobs.succeed(host, req, result)
        return result
    except BaseException as exc:
        if not switched:  # never pull images from under a domain that may run on them
            for path in made:
                Path(path).unlink(missing_ok=True)
            host.driver.set_domain_config(req.domain,
                                          DomainConfig.model_validate(plan["old_config"]))
        jobs.fail(host, req, exc)
        raise


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
