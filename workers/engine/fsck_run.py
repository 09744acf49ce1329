"""``domsnap fsck``, the I/O half: gather a domain's facts on its host, compare them
(:mod:`workers.engine.fsck`), and with ``repair`` fix what is safe.

Runs on the host that owns the files: as the ``domsnap.fsck`` task on the host's
queue (``domsnap fsck DOMAIN`` / ``--host H`` from anywhere), or in-process with the
host's settings (``domsnap fsck --local`` on the host). A domain with an operation in
flight (its lock held, a journal or a pause marker on this host) is skipped, never
judged half-done; a repair holds the domain's lock while it works.
"""

from __future__ import annotations

import logging
import os
import time
import uuid as uuidlib
from pathlib import Path

from domsnap.errors import CommandFailed, DomainLocked, DomsnapError, UnknownDomain
from schemas.models import FsckFinding, FsckReport, FsckRequest, SnapshotRecord
from workers.engine import audit
from workers.engine.fsck import (
    ConfigDisk,
    DomainFacts,
    ImageFacts,
    check,
    image_paths,
    repaired_current,
)
from workers.host import Host
from workers.hostio.currentfile import read_current, write_current

log = logging.getLogger("domsnap.fsck")


def host_domains(host: Host) -> list[str]:
    """Domains the driver knows plus those that only left snapshots behind."""
    uuids = [d.uuid for d in host.driver.list_domains()]
    root = host.settings.snapshots
    if root.is_dir():
        for d in sorted(root.iterdir()):
            try:
                u = str(uuidlib.UUID(d.name))
            except ValueError:
                continue
            if d.is_dir() and u == d.name and u not in uuids:
                uuids.append(u)
    return uuids


def _image(host: Host, path: str) -> ImageFacts:
    if not os.path.exists(path):
        return ImageFacts(path=path, exists=False)
    try:
        data = host.img.info(path, force_share=True, fmt=None)  # probe: what it really is
    except CommandFailed as exc:
        return ImageFacts(path=path, error=(exc.details.get("stderr") or exc.message)[:300])
    backing = data.get("full-backing-filename") or data.get("backing-filename")
    if backing and not os.path.isabs(str(backing)):
        backing = os.path.normpath(os.path.join(os.path.dirname(path), str(backing)))
    return ImageFacts(path=path, format=data.get("format"),
                      backing=str(backing) if backing else None,
                      backing_format=data.get("backing-filename-format"),
                      snapshots=tuple(str(s["name"]) for s in data.get("snapshots", [])))


def gather(host: Host, uuid: str) -> DomainFacts:
    snapdir = host.settings.snapshots / uuid
    facts = DomainFacts(uuid=uuid, host=host.name, snapdir=str(snapdir))
    facts.redis = {r.name: r for r in host.store.list_snapshots(uuid)}
    facts.current_redis = host.store.current(uuid)
    facts.index_ok = host.store.index_matches(uuid)
    facts.current_host = read_current(host.settings.state_dir, uuid)
    if snapdir.is_dir():
        for p in sorted(snapdir.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            facts.dir_files.append(str(p))
            if p.suffix == ".json":
                try:
                    rec = SnapshotRecord.model_validate_json(p.read_text())
                except ValueError:
                    facts.bad_sidecars.append(str(p))
                    continue
                if rec.domain == uuid and p.name == f"{rec.name}.json":
                    facts.sidecars[rec.name] = rec
                else:
                    facts.bad_sidecars.append(str(p))
    try:
        cfg = host.driver.domain_config(uuid)
        facts.config = [ConfigDisk(vdev=d.vdev, target=d.target, format=d.format,
                                   block=d.backendtype == "phy" or d.target.startswith("/dev/"))
                        for d in cfg.disks if d.target and d.devtype == "disk"]
    except UnknownDomain:
        pass  # undefined: only its snapshots are left
    for other in host.driver.list_domains():  # never an image another domain runs on
        if other.uuid != uuid:
            facts.protected.update(d.path for d in other.disks if d.path)
    for rec in {**facts.sidecars, **facts.redis}.values():
        if rec.memory_file and os.path.exists(rec.memory_file):
            facts.present.add(rec.memory_file)
    todo = image_paths(facts)
    while todo:
        path = todo.pop()
        if path in facts.images:
            continue
        img = facts.images[path] = _image(host, path)
        if img.backing:
            todo.append(img.backing)
    return facts


def _busy(host: Host, uuid: str, own: str | None) -> str | None:
    """Why the domain must not be judged now (an operation is in flight), or None."""
    owner = host.store.lock_owner(uuid)
    if owner and owner != own:
        return f"busy: job {owner} holds its lock"
    for entry in host.files.journals():
        req = entry.get("request") or {}
        if req.get("domain") == uuid:
            return f"busy: job {req.get('job_id')} has a journal on this host"
    if uuid in host.files.pausing_jobs():
        return "busy: a pause marker is set"
    return None


def repair(host: Host, facts: DomainFacts, findings: list[FsckFinding]) -> None:
    """Fix the repairable findings (marks each one it fixed)."""
    uuid = facts.uuid
    for f in findings:
        if not f.repairable or f.kind == "current_mismatch":
            continue
        try:
            if f.kind == "record_missing" and f.snapshot:
                host.store.put_snapshots(uuid, [facts.sidecars[f.snapshot]])
            elif f.kind in ("sidecar_missing", "record_mismatch") and f.snapshot:
                host.files.write_sidecar(facts.redis[f.snapshot])
            elif f.kind == "orphan_file" and f.path:
                Path(f.path).unlink(missing_ok=True)
            elif f.kind == "index_mismatch":
                host.store.rebuild_index(uuid)
            else:
                continue
            f.repaired = True
        except (DomsnapError, OSError) as exc:
            f.action = f"{f.action} (failed: {exc})"
    want = repaired_current(facts)
    for f in findings:
        if f.kind != "current_mismatch":
            continue
        try:
            if "Redis" in (f.action or ""):
                host.store.put_snapshots(uuid, [], current=want)
            else:
                write_current(host.settings.state_dir, uuid, want)
            f.repaired = True
        except (DomsnapError, OSError) as exc:
            f.action = f"{f.action} (failed: {exc})"


def run_fsck(host: Host, req: FsckRequest) -> FsckReport:
    report = FsckReport(host=host.name, repair=req.repair)
    uuids = [req.domain] if req.domain else host_domains(host)
    own = f"fsck-{req.job_id}"
    for uuid in uuids:
        why = _busy(host, uuid, None)
        if why:
            report.skipped[uuid] = why
            continue
        locked = False
        try:
            if req.repair:
                host.store.acquire_lock(uuid, own, host.settings.lock_ttl_s)
                locked = True
                why = _busy(host, uuid, own)  # admitted just before we took the lock
                if why:
                    report.skipped[uuid] = why
                    continue
            facts = gather(host, uuid)
            findings = check(facts)
            if req.repair:
                repair(host, facts, findings)
            report.domains.append(uuid)
            report.findings.extend(findings)
        except DomainLocked as exc:
            report.skipped[uuid] = f"busy: {exc.message}"
        finally:
            if locked:
                host.store.release_lock(uuid, own)
    if req.repair:
        done = [f for f in report.findings if f.repaired]
        audit.record(host.settings, host.store, who=req.requested_by or "unknown",
                     op="fsck-repair", outcome="succeeded", domain=req.domain, job_id=req.job_id,
                     details={"repaired": [f"{f.kind}: {f.action}" for f in done][:100],
                              "remaining": len(report.remaining), "at": time.time()})
    return report
