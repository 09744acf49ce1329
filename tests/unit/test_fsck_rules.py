"""fsck's comparison rules (workers/engine/fsck.py) on hand-made facts: every kind of
finding, what is repairable and what never is, and the current pointer."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.config import DiskSpec, DomainConfig
from schemas.models import DiskSnapshot, FsckReport, SnapshotRecord
from workers.engine.fsck import (
    ConfigDisk,
    DomainFacts,
    ImageFacts,
    check,
    image_paths,
    needed,
    repaired_current,
)

U = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
SD = f"/snap/{U}"
BASE = "/img/vda.qcow2"
OV = f"{SD}/s2.vda.qcow2"


def rec(name: str, *, disks: list[DiskSnapshot] | None = None, memory: str | None = None,
        parent: str | None = None, host: str = "h1") -> SnapshotRecord:
    return SnapshotRecord(
        name=name, domain=U, domain_name="d", host=host, driver="qemu", created_at=1.0,
        domain_state="running", disk_only=memory is None, memory_file=memory, parent=parent,
        disks=disks or [], domain_config=DomainConfig(
            name="d", uuid=U, disks=[DiskSpec(vdev="vda", target=BASE, format="qcow2")]))


def internal(name: str) -> SnapshotRecord:
    return rec(name, disks=[DiskSnapshot(vdev="vda", type="internal", format="qcow2",
                                         file=BASE)], memory=f"{SD}/{name}.save")


def external(name: str) -> SnapshotRecord:
    return rec(name, disks=[DiskSnapshot(vdev="vda", type="external", format="qcow2",
                                         file=BASE, overlay=OV)], parent="s1")


def healthy(**kw: Any) -> DomainFacts:
    """s1 (memory + internal in BASE), s2 (external: OV on BASE, active now)."""
    s1, s2 = internal("s1"), external("s2")
    facts = DomainFacts(
        uuid=U, host="h1", snapdir=SD, redis={"s1": s1, "s2": s2}, sidecars={"s1": s1, "s2": s2},
        current_redis="s2", current_host="s2",
        config=[ConfigDisk(vdev="vda", target=OV, format="qcow2")],
        images={BASE: ImageFacts(path=BASE, format="qcow2", snapshots=("s1",)),
                OV: ImageFacts(path=OV, format="qcow2", backing=BASE, backing_format="qcow2")},
        dir_files=[f"{SD}/s1.json", f"{SD}/s2.json", f"{SD}/s1.save", OV],
        present={f"{SD}/s1.save"})
    for k, v in kw.items():
        setattr(facts, k, v)
    return facts


def kinds(facts: DomainFacts) -> list[tuple[str, str | None, bool]]:
    return sorted((f.kind, f.snapshot or f.path, f.repairable) for f in check(facts))


def test_a_healthy_domain_has_no_finding() -> None:
    assert check(healthy()) == []


def test_needed_follows_backing_chains_and_names_sidecars_and_memory() -> None:
    facts = healthy()
    assert needed(facts) >= {BASE, OV, f"{SD}/s1.save", f"{SD}/s1.json", f"{SD}/s2.json"}
    assert image_paths(facts) == [BASE, OV]


def test_records_on_one_side_only_are_rebuilt_from_the_other() -> None:
    f = healthy()
    del f.redis["s2"]
    del f.sidecars["s1"]
    assert kinds(f) == [("record_missing", "s2", True), ("sidecar_missing", "s1", True)]


def test_records_that_differ_rewrite_the_sidecar_from_redis() -> None:
    f = healthy()
    f.sidecars["s1"] = f.sidecars["s1"].model_copy(update={"description": "old"})
    [finding] = check(f)
    assert (finding.kind, finding.repairable) == ("record_mismatch", True)
    assert "sidecar from the Redis record" in (finding.action or "")


def test_another_hosts_redis_record_is_not_this_hosts_business() -> None:
    f = healthy()
    f.redis["x"] = rec("x", host="h2")
    assert check(f) == []


def test_missing_files_and_internal_snapshots_are_reported_not_repairable() -> None:
    f = healthy(present=set(), images={
        BASE: ImageFacts(path=BASE, format="qcow2"),
        OV: ImageFacts(path=OV, exists=False)})
    f.config = []
    assert kinds(f) == [
        ("file_missing", "s1", False),  # its memory file
        ("file_missing", "s2", False),  # its overlay
        ("internal_missing", "s1", False)]
    assert {x.path for x in check(f)} == {OV, f"{SD}/s1.save", BASE}


def test_a_format_the_record_gets_wrong_is_a_mismatch() -> None:
    """The raw-disk bug of issue 7: an overlay recorded (and started) as raw."""
    f = healthy(config=[ConfigDisk(vdev="vda", target=OV, format="raw")])
    s1 = f.redis["s1"]
    lie = s1.model_copy(update={"disks": [s1.disks[0].model_copy(update={"format": "raw"})]})
    f.redis["s1"] = f.sidecars["s1"] = lie
    found = check(f)
    assert sorted((x.kind, x.path) for x in found) == [("format_mismatch", BASE),
                                                       ("format_mismatch", OV)]
    assert not any(x.repairable for x in found)
    assert "started with the wrong format" in next(x.message for x in found if x.path == OV)


def test_backing_chain_mismatches() -> None:
    f = healthy()
    f.images[OV] = ImageFacts(path=OV, format="qcow2", backing=BASE, backing_format="raw")
    assert kinds(f) == [("backing_mismatch", OV, False)]
    f.images[OV] = ImageFacts(path=OV, format="qcow2", backing=BASE, backing_format=None)
    assert "not recorded" in check(f)[0].message
    f.images[OV] = ImageFacts(path=OV, format="qcow2", backing="/gone.qcow2",
                              backing_format="qcow2")
    assert ("backing_mismatch", OV, False) in kinds(f)


def test_overlay_that_is_not_qcow2() -> None:
    f = healthy(config=[])
    f.images[OV] = ImageFacts(path=OV, format="raw")
    assert kinds(f) == [("format_mismatch", "s2", False)]


def test_orphans_in_the_snapshot_dir() -> None:
    f = healthy()
    f.dir_files += [f"{SD}/junk.save", f"{SD}/x.vdb.qcow2", f"{SD}/notes.txt",
                    f"{SD}/gone.json"]
    assert kinds(f) == [("orphan_file", f"{SD}/junk.save", True),
                        ("orphan_file", f"{SD}/notes.txt", False),  # not a name domsnap makes
                        ("orphan_file", f"{SD}/x.vdb.qcow2", True)]


def test_an_image_another_domain_runs_on_is_no_orphan() -> None:
    f = healthy(protected={f"{SD}/theirs.qcow2"})
    f.dir_files.append(f"{SD}/theirs.qcow2")
    assert check(f) == []


def test_a_file_something_still_backs_on_is_no_orphan() -> None:
    """An image only the active overlay's chain needs (no record names it) stays."""
    mid = f"{SD}/mid.qcow2"
    f = healthy()
    f.images[OV] = ImageFacts(path=OV, format="qcow2", backing=mid, backing_format="qcow2")
    f.images[mid] = ImageFacts(path=mid, format="qcow2", backing=BASE, backing_format="qcow2")
    f.dir_files.append(mid)
    f.redis["s2"] = f.sidecars["s2"] = f.redis["s2"].model_copy(update={"disks": []})
    assert check(f) == []


def test_internal_snapshots_no_record_names_are_reported_never_repairable() -> None:
    f = healthy()
    f.images[BASE] = ImageFacts(path=BASE, format="qcow2", snapshots=("s1", "stray"))
    [finding] = check(f)
    assert (finding.kind, finding.snapshot, finding.repairable) == ("orphan_internal", "stray",
                                                                    False)


def test_unreadable_images_and_sidecars() -> None:
    f = healthy(bad_sidecars=[f"{SD}/bad.json"])
    f.dir_files.append(f"{SD}/bad.json")
    f.images[OV] = ImageFacts(path=OV, error="Could not open")
    assert kinds(f) == [("unreadable", f"{SD}/bad.json", False), ("unreadable", OV, False)]


def test_parent_that_is_no_snapshot() -> None:
    f = healthy()
    f.redis["s3"] = f.sidecars["s3"] = rec("s3", parent="deleted-long-ago")
    assert kinds(f) == [("parent_missing", "s3", False)]


@pytest.mark.parametrize(("redis", "host", "want", "fixes"), [
    ("s2", "s2", "s2", []),
    (None, "s2", "s2", ["Redis"]),  # Redis lost it: the host's copy wins
    ("nosuch", "s2", "s2", ["Redis"]),  # dangling in Redis
    ("s1", "s2", "s1", ["host"]),  # they differ: Redis (the commit point) wins
    ("s1", None, "s1", ["host"]),
    ("nosuch", "gone", None, ["Redis", "host"]),  # both dangling: none
    (None, None, None, []),  # e.g. the root snapshot was deleted
])
def test_current(redis: str | None, host: str | None, want: str | None,
                 fixes: list[str]) -> None:
    f = healthy(current_redis=redis, current_host=host)
    assert repaired_current(f) == want
    found = check(f)
    assert all(x.kind == "current_mismatch" and x.repairable for x in found)
    assert sorted("Redis" if "Redis's" in (x.action or "") else "host" for x in found) == fixes


def test_report_remaining() -> None:
    f = healthy(current_redis=None)
    rep = FsckReport(host="h1", repair=True, findings=check(f))
    assert len(rep.remaining) == 1
    rep.findings[0].repaired = True
    assert rep.remaining == []
