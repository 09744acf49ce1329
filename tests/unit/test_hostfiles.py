"""What a host keeps on disk: sidecar records, journals, pause markers."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from schemas.config import DomainConfig
from schemas.models import SnapshotRecord
from workers.hostio.hostfiles import HostFiles

U = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
U2 = "0b0f3b70-5a8e-4b8c-9d57-1e2f3a4b5c6d"
J1 = "11111111-1111-4111-8111-111111111111"
J2 = "22222222-2222-4222-8222-222222222222"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def files(tmp_path: Path) -> HostFiles:
    return HostFiles(tmp_path / "state", tmp_path / "snapshots")


@pytest.fixture(autouse=True)
def permissive_umask() -> object:
    """Modes must not depend on a lucky umask."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def rec(name: str, domain: str = U, created_at: float = 1.0) -> SnapshotRecord:
    return SnapshotRecord(
        name=name, domain=domain, domain_name="domu", host="h1", driver="qemu",
        created_at=created_at, domain_state="running", disk_only=False,
        memory_file=f"/snapshots/{domain}/{name}.save",
        domain_config=DomainConfig(name="domu", uuid=domain),
    )


# ---------------------------------------------------------------- sidecars


def test_sidecar_write_read_remove(files: HostFiles, tmp_path: Path) -> None:
    record = rec("s1")
    files.write_sidecar(record)
    path = tmp_path / "snapshots" / U / "s1.json"
    assert files.sidecar_path(U, "s1") == path
    assert SnapshotRecord.model_validate_json(path.read_text()) == record
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert files.sidecars() == [record]
    assert sorted(os.listdir(path.parent)) == ["s1.json"]  # no temp file left
    files.remove_sidecar(U, "s1")
    assert not path.exists()
    assert files.sidecars() == []
    files.remove_sidecar(U, "s1")  # idempotent


def test_sidecar_rewrite_replaces(files: HostFiles) -> None:
    files.write_sidecar(rec("s1"))
    newer = rec("s1").model_copy(update={"description": "renamed parent"})
    files.write_sidecar(newer)
    assert files.sidecars() == [newer]
    assert mode(files.sidecar_path(U, "s1")) == 0o600


def test_domain_dir_tightened_to_0700(files: HostFiles, tmp_path: Path) -> None:
    loose = tmp_path / "snapshots" / U
    loose.mkdir(parents=True, mode=0o755)
    os.chmod(loose, 0o755)
    assert files.domain_dir(U) == loose
    assert mode(loose) == 0o700
    files.write_sidecar(rec("s1"))
    assert mode(loose) == 0o700


def test_sidecars_of_every_domain_skip_garbage(files: HostFiles) -> None:
    a, b, c = rec("a", U), rec("b", U2), rec("c", U)
    for r in (a, b, c):
        files.write_sidecar(r)
    (files.snapshot_dir / U / "broken.json").write_text("{not json")
    (files.snapshot_dir / U / "other.json").write_text('{"name": "x"}')
    (files.snapshot_dir / U / "s1.save").write_bytes(b"Xen saved domain")
    got = files.sidecars()
    assert sorted((r.domain, r.name) for r in got) == sorted(
        (r.domain, r.name) for r in (a, b, c))
    assert {r.name: r for r in got} == {"a": a, "b": b, "c": c}


def test_sidecars_without_dir(files: HostFiles) -> None:
    assert files.sidecars() == []


# ---------------------------------------------------------------- journals


def test_journal_write_read_remove(files: HostFiles, tmp_path: Path) -> None:
    before = time.time()
    files.write_journal(J1, {"op": "create", "domain": U, "step": "paused"})
    got = files.read_journal(J1)
    assert got is not None
    assert {k: got[k] for k in ("op", "domain", "step")} == {
        "op": "create", "domain": U, "step": "paused"}
    assert before <= got["updated_at"] <= time.time()
    path = tmp_path / "state" / "journal" / f"{J1}.json"
    assert files.journal_path(J1) == path
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    files.write_journal(J1, {"op": "create", "domain": U, "step": "disks"})
    again = files.read_journal(J1)
    assert again is not None and again["step"] == "disks"
    files.remove_journal(J1)
    assert files.read_journal(J1) is None
    files.remove_journal(J1)  # idempotent


def test_journals_lists_all_and_skips_garbage(files: HostFiles) -> None:
    assert files.journals() == []
    files.write_journal(J1, {"job_id": J1, "step": "a"})
    files.write_journal(J2, {"job_id": J2, "step": "b"})
    (files.journal_dir / "torn.json").write_text('{"job_id": ')
    got = files.journals()
    assert sorted(j["job_id"] for j in got) == [J1, J2]
    assert sorted(os.listdir(files.journal_dir)) == sorted(
        [f"{J1}.json", f"{J2}.json", "torn.json"])


def test_read_unknown_or_torn_journal(files: HostFiles) -> None:
    assert files.read_journal(J1) is None
    files.journal_dir.mkdir(parents=True)
    files.journal_path(J1).write_text("{")
    assert files.read_journal(J1) is None


# ---------------------------------------------------------------- pause markers


def test_pause_marker_cleared_only_by_owner(files: HostFiles, tmp_path: Path) -> None:
    assert files.pausing_jobs() == {}
    files.mark_pausing(U, J1)
    marker = tmp_path / "state" / "pausing" / U
    assert mode(marker) == 0o600
    assert mode(marker.parent) == 0o700
    assert json.loads(marker.read_text())["job_id"] == J1
    assert files.pausing_jobs() == {U: J1}
    files.clear_pausing(U, J2)  # not the owner: kept
    assert files.pausing_jobs() == {U: J1}
    files.clear_pausing(U, J1)
    assert files.pausing_jobs() == {}
    assert not marker.exists()
    files.clear_pausing(U, J1)  # idempotent


def test_pause_markers_of_several_domains(files: HostFiles) -> None:
    files.mark_pausing(U, J1)
    files.mark_pausing(U2, J2)
    assert files.pausing_jobs() == {U: J1, U2: J2}
    files.mark_pausing(U, J2)  # redelivered/next job takes over the marker
    assert files.pausing_jobs() == {U: J2, U2: J2}
    files.clear_pausing(U, J1)
    assert files.pausing_jobs() == {U: J2, U2: J2}


def test_pausing_jobs_skips_garbage(files: HostFiles) -> None:
    files.mark_pausing(U, J1)
    (files.pause_dir / U2).write_text("{torn")
    assert files.pausing_jobs() == {U: J1}


def test_pausing_jobs_ignores_leftover_temp_file(files: HostFiles) -> None:
    """A worker killed between writing a marker's temp file and renaming it leaves
    ``.<uuid>.tmp`` behind: that is not a domain uuid and must not be reported as one
    (start-up recovery acts on every key of pausing_jobs())."""
    files.mark_pausing(U, J1)
    (files.pause_dir / f".{U2}.tmp").write_text(json.dumps({"job_id": J2, "since": 1.0}))
    assert files.pausing_jobs() == {U: J1}


def test_pause_marker_carries_its_deadline(files: HostFiles) -> None:
    before = time.time()
    files.mark_pausing(U, J1, budget_s=42.5)
    m = files.pause_markers()[U]
    assert m["job_id"] == J1
    assert before <= m["since"] <= time.time()
    assert m["deadline"] == pytest.approx(m["since"] + 42.5)


def test_pause_marker_without_deadline_is_due_at_once(files: HostFiles) -> None:
    """A marker written before budgets existed has no deadline: the guard acts on it."""
    files.pause_dir.mkdir(parents=True)
    (files.pause_dir / U).write_text(json.dumps({"job_id": J1, "since": 5.0}))
    assert files.pause_markers()[U]["deadline"] == 0.0


def test_guard_record_is_appended_json_lines(files: HostFiles) -> None:
    files.guard_record({"event": "budget-expired", "job_id": J1})
    files.guard_record({"event": "recovered", "job_id": J1})
    assert [e["event"] for e in files.guard_events()] == ["budget-expired", "recovered"]
    assert mode(files.guard_log_path) == 0o600


def test_begin_disk_tells_a_cut_short_attempt(files: HostFiles) -> None:
    assert files.begin_disk(J1, "vda") is True
    assert files.begin_disk(J1, "vda") is False  # started before: undo it first
    assert files.begin_disk(J1, "vdb") is True
    files.remove_journal(J1)
    assert list(files.journal_dir.glob(f"{J1}.disk-*")) == []
