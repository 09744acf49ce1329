"""Snapshot delete: remove everything that belongs to a snapshot, lose nothing else.

Internal: delete it from its qcow2 (through QMP while the domain runs on that
image, ``qemu-img`` when nobody has it open). External, with F the snapshot's
frozen image: overlays on F that nothing needs any more go; if exactly one
image C still needs F, C is merged down into F (``block-commit`` live,
``qemu-img commit`` offline) and everything that pointed at C points at F, so the
original image path survives; two or more (F is a branch point) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, Refused
from schemas.config import DomainConfig
from schemas.models import DeleteRequest, DomainInfo, SnapshotRecord
from workers.engine import jobs
from workers.engine.formats import known_formats, walk
from workers.engine.recovery import guarded
from workers.host import Host
from workers.hostio import faults


def _chain(host: Host, path: str | None, formats: dict[str, str]) -> list[str]:
    """``path`` and every image below it, each read with its own format (noted in
    ``formats``, which must know ``path``'s)."""
    if not path or path not in formats:
        return []
    found = walk(host.img, path, formats[path], formats)
    formats.update(found)  # a header's backing format is how QEMU opens that file
    return [p for p, _ in found]


def plan_delete(host: Host, req: DeleteRequest, info: DomainInfo) -> dict[str, Any]:
    rec = host.store.get_snapshot(req.domain, req.name)  # UnknownSnapshot if gone
    records = host.store.list_snapshots(req.domain)
    others = [r for r in records if r.name != rec.name]
    config = host.driver.domain_config(req.domain)
    formats = known_formats(config, records)
    active_path = {d.vdev: d.target for d in config.disks}
    running = info.state in ("running", "paused")
    steps: list[dict[str, Any]] = []
    for disk in rec.disks:
        if disk.strategy == "lvm":
            steps.append({"op": "lvm-remove", "vdev": disk.vdev, "path": disk.file})
            continue
        chain = _chain(host, active_path.get(disk.vdev), formats)
        if disk.type == "internal":
            live = running and disk.file in chain
            if live and chain[0] != disk.file:
                raise Refused(
                    f"the internal snapshot of {disk.vdev} lives in {disk.file}, now a backing "
                    "image of the running domain (QEMU: 'Need a root block node'); shut the "
                    "domain off to delete it")
            steps.append({"op": "internal", "vdev": disk.vdev, "path": disk.file, "live": live})
            if not live and _abandoned(host, disk.file, others, config, formats):
                # an image domsnap made (a revert's overlay) that held nothing else: it
                # goes with its last snapshot, or it stays as an orphan nothing names
                steps.append({"op": "rm", "path": disk.file})
            continue
        steps.extend(_plan_external(host, rec, disk.vdev, disk.file, disk.overlay, others,
                                    chain, running, formats))
    children = [r.name for r in others if r.parent == rec.name]
    return {"steps": steps, "memory_file": rec.memory_file, "children": children,
            "parent": rec.parent, "running": running}


def _plan_external(host: Host, rec: SnapshotRecord, vdev: str, frozen: str,
                   overlay: str | None, others: list[SnapshotRecord], active_chain: list[str],
                   running: bool, formats: dict[str, str]) -> list[dict[str, Any]]:
    mine = [d for r in others for d in r.disks if d.vdev == vdev and d.strategy != "lvm"]
    holds_others = any(d.file == frozen for d in mine)  # e.g. internal snapshots in F
    known = {p for d in mine for p in (d.file, d.overlay) if p} | set(active_chain)
    if overlay:
        known.add(overlay)
    needed = set(active_chain)
    for d in mine:
        needed.update(_chain(host, d.file, formats))
    known = {p for p in known if os.path.exists(p) and p in formats}
    backing = {p: _backing(host, p, formats[p]) for p in known}
    children = [p for p in known if backing[p] == frozen]
    live_children = [c for c in children if c in needed]
    garbage = [c for c in children if c not in needed and
               not any(backing[p] == c for p in known)]
    steps: list[dict[str, Any]] = [{"op": "rm", "path": g} for g in garbage]
    if len(live_children) >= 2:
        raise Refused(
            f"{vdev}: the snapshot's image {frozen} is a branch point (used by "
            f"{', '.join(sorted(live_children))}); delete the snapshots of one branch first")
    if live_children:
        top = live_children[0]
        if any(d.file == top and d.type == "internal" for d in mine):
            raise Refused(f"{vdev}: merging {top} into {frozen} would lose an internal snapshot "
                          f"held by {top}")
        grandchildren = [p for p in known if backing[p] == top]
        steps.append({"op": "commit", "vdev": vdev, "top": top, "base": frozen,
                      "base_format": formats.get(frozen, "qcow2"),
                      "live": running and top in active_chain,
                      "active": bool(active_chain) and active_chain[0] == top,
                      "rebase": [g for g in grandchildren if not (running and g in active_chain)]})
    elif frozen not in needed and not holds_others:
        steps.append({"op": "rm", "path": frozen})
    return steps


@guarded("delete")
def run_delete(host: Host, req: DeleteRequest, plan: dict[str, Any]) -> dict[str, Any]:
    return carry_out_delete(host, req, plan, done=0)


def carry_out_delete(host: Host, req: DeleteRequest, plan: dict[str, Any], *, done: int,
                     why: str | None = None) -> dict[str, Any]:
    """The delete, from step ``done`` of the plan on (then the records). The journal
    notes each step as it ends, so a worker killed anywhere is carried forward from
    the step it was in (start-up recovery, a redelivered step): every step is safe to
    run again (a merge QEMU still holds is finished first, one done already is not
    done twice, renames and removals are idempotent). A delete only moves data down
    into images that stay: carrying it forward loses nothing."""
    emit = jobs.progress_for(host, req.job_id)
    try:
        if done == 0 and why is None:
            jobs.check_cancel(host, req, "before it touched the domain")
        steps = plan["steps"]
        renames: dict[str, tuple[str, str]] = {
            s["top"]: (s["base"], s.get("base_format", "qcow2")) for s in steps[:done]
            if s["op"] == "commit"}
        for index in range(done, len(steps)):
            step = steps[index]
            op = step["op"]
            if op == "internal":
                emit("disk", f"{step['vdev']}: deleting internal snapshot")
                if req.name not in host.img.snapshot_list(step["path"], force_share=True):
                    pass  # deleted already (an attempt cut short)
                elif step["live"] and host.driver.is_active(req.domain):
                    host.driver.delete_internal_live(req.domain, name=req.name, path=step["path"])
                else:
                    host.img.snapshot_delete(step["path"], req.name)
            elif op == "commit":
                emit("disk", f"{step['vdev']}: merging {step['top']} into {step['base']}")
                if step["live"] and host.driver.is_active(req.domain):
                    host.driver.commit_live(req.domain, top=step["top"], base=step["base"])
                elif os.path.exists(step["top"]):
                    host.img.commit(step["top"])  # again after a cut attempt: harmless
                faults.point("delete-after-commit")
                base_fmt = step.get("base_format", "qcow2")  # journals of older versions
                for child in step["rebase"]:
                    if os.path.exists(child):
                        host.img.rebase(child, step["base"], backing_fmt=base_fmt, unsafe=True)
                renames[step["top"]] = (step["base"], base_fmt)
                _apply_renames(host, req, plan, renames)  # nothing may name the merged image
                Path(step["top"]).unlink(missing_ok=True)
            elif op == "lvm-remove":
                emit("disk", f"{step['vdev']}: removing LVM snapshot {step['path']}")
                host.lvm.remove(step["path"])
            elif op == "rm":
                Path(step["path"]).unlink(missing_ok=True)
            _noted(host, req, index + 1)
        if renames:
            _apply_renames(host, req, plan, renames)
        _forget_removed(host, req, plan, {st["path"] for st in steps if st["op"] == "rm"})
        if plan["memory_file"]:
            Path(plan["memory_file"]).unlink(missing_ok=True)
        updated = []
        for rec in host.store.list_snapshots(req.domain):
            if rec.name in plan["children"]:
                rec = rec.model_copy(update={"parent": plan["parent"]})
                host.files.write_sidecar(rec)
                updated.append(rec)
        current = host.store.current(req.domain)
        host.store.remove_snapshot(req.domain, req.name, updated=updated,
                                   current=plan["parent"] if current == req.name else current,
                                   fence=jobs.fence_of(req, plan))
        host.files.remove_sidecar(req.domain, req.name)
        result: dict[str, Any] = {"name": req.name, "deleted": True}
        jobs.succeed_carried(host, req, result, why)
        return result
    except BaseException as exc:
        jobs.fail_carried(host, req, exc, why)
        if why is None:
            raise
        return {}


def _abandoned(host: Host, path: str, others: list[SnapshotRecord], config: DomainConfig,
               formats: dict[str, str]) -> bool:
    """Whether nothing needs ``path`` once this snapshot is gone: an image under domsnap's
    snapshot dir (never a user's), in no active chain, named by no other record, and the
    backing file of no image a record or the domain uses."""
    ours = host.settings.snapshots.resolve()
    if ours not in Path(path).resolve().parents:
        return False
    named = {p for r in others for d in r.disks for p in (d.file, d.overlay) if p}
    if path in named:
        return False
    users = named | {d.target for d in config.disks if d.target}
    try:
        for top in users:
            if top in formats and os.path.exists(top) and path in _chain(host, top, formats):
                return False
    except DomsnapError:
        return False  # a chain domsnap cannot read: keep the image rather than guess
    return True


def _forget_removed(host: Host, req: DeleteRequest, plan: dict[str, Any],
                    removed: set[str]) -> None:
    """Records that named a removed image as their overlay (the delta a later snapshot
    froze, on a branch a revert has left) no longer name it: a record names only files
    that exist. Their frozen images are never removed (the plan keeps them)."""
    if not removed:
        return
    changed = []
    for rec in host.store.list_snapshots(req.domain):
        if rec.name == req.name or not any(d.overlay in removed for d in rec.disks):
            continue
        new = rec.model_copy(update={"disks": [
            d.model_copy(update={"overlay": None, "overlay_format": None})
            if d.overlay in removed else d for d in rec.disks]})
        host.files.write_sidecar(new)
        changed.append(new)
    if changed:
        host.store.put_snapshots(req.domain, changed, fence=jobs.fence_of(req, plan))


def _noted(host: Host, req: DeleteRequest, done: int) -> None:
    entry = host.files.read_journal(req.job_id)
    if entry is not None:
        host.files.write_journal(req.job_id, {**entry, "done": done})


def _apply_renames(host: Host, req: DeleteRequest, plan: dict[str, Any],
                   renames: dict[str, tuple[str, str]]) -> None:
    """After merging C into F, everything that named C names F, with F's format (C was
    a qcow2 overlay; F may be a raw image)."""
    def fix(p: str | None) -> str | None:
        return renames[p][0] if p and p in renames else p

    def fmt(p: str | None, old: Any) -> Any:
        return renames[p][1] if p and p in renames else old

    changed = []
    for rec in host.store.list_snapshots(req.domain):
        if rec.name == req.name:
            continue
        disks = [d.model_copy(update={"file": fix(d.file), "format": fmt(d.file, d.format),
                                      "overlay": fix(d.overlay),
                                      "overlay_format": fmt(d.overlay, d.overlay_format)})
                 for d in rec.disks]
        cfg_disks = [d.model_copy(update={"target": fix(d.target),
                                          "format": fmt(d.target, d.format)})
                     for d in rec.domain_config.disks]
        new = rec.model_copy(update={"disks": disks, "domain_config": rec.domain_config.model_copy(
            update={"disks": cfg_disks})})
        if new != rec:
            host.files.write_sidecar(new)
            changed.append(new)
    if changed:
        host.store.put_snapshots(req.domain, changed, fence=jobs.fence_of(req, plan))
    cfg: DomainConfig = host.driver.domain_config(req.domain)
    host.driver.set_domain_config(req.domain, cfg.model_copy(update={"disks": [
        d.model_copy(update={"target": fix(d.target), "format": fmt(d.target, d.format)})
        for d in cfg.disks]}))


def _backing(host: Host, path: str, fmt: str) -> str | None:
    """The backing file of ``path`` read as ``fmt`` (a raw image has none)."""
    return None if fmt == "raw" else host.img.backing_file(path, fmt=fmt, force_share=True)
