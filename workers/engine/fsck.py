"""``domsnap fsck``, the comparison half: pure functions from gathered facts to findings.

What a host knows about one domain (Redis records, sidecar records, the two
``current`` pointers, the domain's config, what ``qemu-img info -U`` says about
every image involved, the files in the domain's snapshot dir) is collected by
:mod:`workers.engine.fsck_run` into a :class:`DomainFacts`; :func:`check` compares
it and returns :class:`schemas.models.FsckFinding` objects, each saying whether
``--repair`` may fix it and how. Nothing here does I/O, so every rule is unit-tested
on hand-made facts.

What counts as safe to repair (everything else is only reported):
- a record that exists on one side only: the other side is rebuilt from it
  (Redis from the sidecar, the sidecar from Redis); records that differ: the
  sidecar is rewritten from Redis (Redis is the commit point of every operation);
- the ``current`` pointer: Redis from the host's copy when Redis has none or a
  dangling one, the host's copy from Redis otherwise;
- a ``.save`` or ``.qcow2`` file in the domain's snapshot dir that no record, no
  domain config and no backing chain of those names: removed. Files anywhere else
  (users' images) are never removed, and neither is any internal snapshot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from schemas.models import FsckFinding, SnapshotRecord

REMOVABLE_SUFFIXES = (".save", ".qcow2")


@dataclass(frozen=True)
class ImageFacts:
    """``qemu-img info --output=json -U`` of one path (format probed, never assumed)."""

    path: str
    exists: bool = True
    format: str | None = None
    backing: str | None = None  # absolute path
    backing_format: str | None = None
    snapshots: tuple[str, ...] = ()
    error: str | None = None  # qemu-img could not read it


@dataclass(frozen=True)
class ConfigDisk:
    vdev: str
    target: str
    format: str
    block: bool = False  # a block device (LVM/phy): no qemu-img checks


@dataclass
class DomainFacts:
    uuid: str
    host: str
    snapdir: str  # <snapshot dir>/<uuid>
    redis: dict[str, SnapshotRecord] = field(default_factory=dict)
    sidecars: dict[str, SnapshotRecord] = field(default_factory=dict)
    bad_sidecars: list[str] = field(default_factory=list)
    current_redis: str | None = None
    current_host: str | None = None
    config: list[ConfigDisk] = field(default_factory=list)
    images: dict[str, ImageFacts] = field(default_factory=dict)
    dir_files: list[str] = field(default_factory=list)  # regular files, not dotfiles
    present: set[str] = field(default_factory=set)  # memory files found on disk
    protected: set[str] = field(default_factory=set)  # other domains' active images
    index_ok: bool = True  # the summary index (domsnap/snapindex.py) matches the records


def records(facts: DomainFacts) -> dict[str, SnapshotRecord]:
    """Every record of the domain that belongs to this host, Redis winning on conflict."""
    out = {n: r for n, r in facts.sidecars.items()}
    out.update({n: r for n, r in facts.redis.items() if r.host == facts.host})
    return out


def image_paths(facts: DomainFacts) -> list[str]:
    """The images a record or the config names (qemu-img looks at these and their
    backing chains); block devices excluded."""
    paths: list[str] = []
    for rec in records(facts).values():
        for d in rec.disks:
            if d.strategy == "lvm":
                continue
            paths += [p for p in (d.file, d.overlay) if p]
    paths += [d.target for d in facts.config if not d.block]
    return list(dict.fromkeys(paths))


def needed(facts: DomainFacts) -> set[str]:
    """Every file something refers to: record files and overlays, memory files,
    sidecars of known records, config targets, and their backing chains."""
    out: set[str] = set()
    recs = records(facts)
    for rec in recs.values():
        if rec.memory_file:
            out.add(rec.memory_file)
        out.add(os.path.join(facts.snapdir, f"{rec.name}.json"))
    todo = image_paths(facts)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        img = facts.images.get(p)
        if img is not None and img.backing:
            todo.append(img.backing)
    return out


def _f(facts: DomainFacts, kind: str, message: str, **kw: object) -> FsckFinding:
    return FsckFinding.model_validate({"kind": kind, "domain": facts.uuid, "message": message,
                                       **kw})


def check(facts: DomainFacts) -> list[FsckFinding]:
    out = check_records(facts)
    out += check_images(facts)
    out += check_orphans(facts)
    out += check_current(facts)
    out += check_index(facts)
    return out


def check_index(facts: DomainFacts) -> list[FsckFinding]:
    """The listing index says what the records say (records from before it existed, or
    written by an older worker, are not in it until this is repaired)."""
    if facts.index_ok:
        return []
    return [_f(facts, "index_mismatch", "the snapshot summaries or the by-time index do not "
               "match the records (listings read the full records until it is rebuilt)",
               repairable=True, action="rebuild the summary index from the records")]


def check_records(facts: DomainFacts) -> list[FsckFinding]:
    """Redis and sidecars agree (invariant 6); every file a record names exists."""
    out: list[FsckFinding] = []
    for path in facts.bad_sidecars:
        out.append(_f(facts, "unreadable", f"sidecar {path} is not a valid record", path=path))
    for name, side in sorted(facts.sidecars.items()):
        red = facts.redis.get(name)
        if red is None:
            out.append(_f(facts, "record_missing", f"snapshot {name}: in its sidecar but not in "
                          "Redis", snapshot=name, repairable=True,
                          action="write the Redis record from the sidecar"))
        elif red != side:
            out.append(_f(facts, "record_mismatch", f"snapshot {name}: the Redis record and the "
                          "sidecar differ", snapshot=name, repairable=True,
                          action="rewrite the sidecar from the Redis record"))
    for name, red in sorted(facts.redis.items()):
        if red.host == facts.host and name not in facts.sidecars:
            out.append(_f(facts, "sidecar_missing", f"snapshot {name}: in Redis but its sidecar "
                          "is missing", snapshot=name, repairable=True,
                          action="write the sidecar from the Redis record"))
    recs = records(facts)
    for name, rec in sorted(recs.items()):
        if rec.parent and rec.parent not in recs:
            out.append(_f(facts, "parent_missing", f"snapshot {name}: its parent {rec.parent} "
                          "is no snapshot", snapshot=name))
        if not rec.disk_only and (not rec.memory_file or not _exists(facts, rec.memory_file)):
            out.append(_f(facts, "file_missing", f"snapshot {name}: memory file "
                          f"{rec.memory_file} is missing", snapshot=name, path=rec.memory_file))
    return out


def _exists(facts: DomainFacts, path: str) -> bool:
    img = facts.images.get(path)
    return img.exists if img is not None else path in facts.present


def check_images(facts: DomainFacts) -> list[FsckFinding]:
    """What the records and the config say about each image is what it is (invariant 7)."""
    out: list[FsckFinding] = []
    for name, rec in sorted(records(facts).items()):
        for d in rec.disks:
            if d.strategy == "lvm":
                continue
            img = facts.images.get(d.file)
            where = f"snapshot {name}, {d.vdev}"
            if img is None or not img.exists:
                out.append(_f(facts, "file_missing", f"{where}: image {d.file} is missing",
                              snapshot=name, path=d.file))
                continue
            if img.error:
                continue  # reported once below, with the image
            if img.format != d.format:
                out.append(_f(facts, "format_mismatch", f"{where}: {d.file} is recorded as "
                              f"{d.format} but qemu-img says {img.format}", snapshot=name,
                              path=d.file))
            if d.type == "internal" and name not in img.snapshots:
                out.append(_f(facts, "internal_missing", f"{where}: internal snapshot {name} "
                              f"is not in {d.file}", snapshot=name, path=d.file))
            if d.type == "external" and d.overlay and d.overlay != d.file:
                ov = facts.images.get(d.overlay)
                if ov is None or not ov.exists:
                    out.append(_f(facts, "file_missing", f"{where}: overlay {d.overlay} is "
                                  "missing", snapshot=name, path=d.overlay))
                elif not ov.error and ov.format != "qcow2":
                    out.append(_f(facts, "format_mismatch", f"{where}: overlay {d.overlay} is "
                                  f"{ov.format}, not qcow2", snapshot=name, path=d.overlay))
    for c in facts.config:
        if c.block:
            continue
        img = facts.images.get(c.target)
        if img is None or not img.exists:
            out.append(_f(facts, "file_missing", f"config, {c.vdev}: active image {c.target} "
                          "is missing", path=c.target))
        elif not img.error and img.format != c.format:
            out.append(_f(facts, "format_mismatch", f"config, {c.vdev}: {c.target} is given as "
                          f"{c.format} but qemu-img says {img.format}: the domain would be "
                          "started with the wrong format", path=c.target))
    for path, img in sorted(facts.images.items()):
        if img.error:
            out.append(_f(facts, "unreadable", f"qemu-img cannot read {path}: {img.error}",
                          path=path))
            continue
        if not img.exists or not img.backing:
            continue
        base = facts.images.get(img.backing)
        if base is None or not base.exists:
            out.append(_f(facts, "backing_mismatch", f"{path}: its backing file {img.backing} "
                          "is missing", path=path))
        elif img.backing_format is None:
            out.append(_f(facts, "backing_mismatch", f"{path}: its backing format is not "
                          "recorded (qemu-img would probe it)", path=path))
        elif not base.error and base.format != img.backing_format:
            out.append(_f(facts, "backing_mismatch", f"{path}: backing file {img.backing} is "
                          f"recorded as {img.backing_format} but is {base.format}", path=path))
    return out


def check_orphans(facts: DomainFacts) -> list[FsckFinding]:
    """Files and internal snapshots nothing names (a failed or half-undone operation)."""
    out: list[FsckFinding] = []
    keep = needed(facts)
    bad = set(facts.bad_sidecars)
    for path in sorted(facts.dir_files):
        if path in keep or path in bad or path in facts.protected or path.endswith(".json"):
            continue  # a sidecar without a record is a record_missing, not an orphan
        ours = path.endswith(REMOVABLE_SUFFIXES)
        out.append(_f(facts, "orphan_file", f"{path}: no record, config or backing chain "
                      "needs it", path=path, repairable=ours,
                      action="remove it" if ours else None))
    claimed = {(d.file, rec.name) for rec in records(facts).values() for d in rec.disks
               if d.type == "internal"}
    for path, img in sorted(facts.images.items()):
        for snap in img.snapshots:
            if (path, snap) not in claimed:
                out.append(_f(facts, "orphan_internal", f"{path}: internal snapshot {snap} is "
                              "named by no record (left by a failed operation, or made outside "
                              "domsnap)", path=path, snapshot=snap))
    return out


def repaired_current(facts: DomainFacts) -> str | None:
    """What ``current`` should be: Redis's if it names a record, else the host's copy if
    that does, else none."""
    recs = records(facts)
    if facts.current_redis in recs:
        return facts.current_redis
    if facts.current_host in recs:
        return facts.current_host
    return None


def check_current(facts: DomainFacts) -> list[FsckFinding]:
    recs = records(facts)
    want = repaired_current(facts)
    out: list[FsckFinding] = []
    if facts.current_redis is not None and facts.current_redis not in recs:
        out.append(_f(facts, "current_mismatch", f"current snapshot {facts.current_redis} "
                      "(Redis) is no snapshot", snapshot=facts.current_redis, repairable=True,
                      action=f"set Redis's current to {want or 'none'}"))
    elif facts.current_redis is None and want is not None:
        out.append(_f(facts, "current_mismatch", f"Redis has no current snapshot; the host "
                      f"says {want}", snapshot=want, repairable=True,
                      action=f"set Redis's current to {want}"))
    if facts.current_host != want and (facts.current_host is not None or want is not None):
        out.append(_f(facts, "current_mismatch", f"the host's current snapshot is "
                      f"{facts.current_host or 'none'}, Redis says {want or 'none'}",
                      snapshot=want, repairable=True,
                      action=f"set the host's current to {want or 'none'}"))
    return out
