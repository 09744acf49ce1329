"""Request ids, the cancel flag, the audit stream and file, the host's current pointer,
and fsck's exit codes: store methods against fakeredis, files in tmp_path."""

from __future__ import annotations

import os
import stat
import uuid as _uuid
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from domsnap.errors import InvalidInput, UnknownJob
from domsnap.store import Store
from domsnap.validation import parse_model
from schemas.models import (
    AuditEntry,
    CreateRequest,
    FsckFinding,
    FsckReport,
    FsckRequest,
    JobRecord,
)
from workers.engine.requests import duplicate_submission
from workers.hostio import auditlog
from workers.hostio.currentfile import read_current, write_current

U = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
J1 = "11111111-1111-4111-8111-111111111111"
J2 = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def store() -> Store:
    r: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return Store(r, job_ttl_s=3600)


def req(job_id: str = J1, name: str = "s1", **kw: Any) -> CreateRequest:
    return CreateRequest.model_validate({"job_id": job_id, "domain": U, "host": "h1",
                                         "name": name, **kw})


def test_request_id_and_requested_by_are_validated() -> None:
    assert req(request_id="a" * 128, requested_by="svc@ctl.example").request_id == "a" * 128
    for field, bad in (("request_id", "a" * 129), ("request_id", "x y"), ("request_id", ""),
                       ("requested_by", "bob;rm"), ("requested_by", "\n")):
        with pytest.raises(InvalidInput, match=field) as exc:
            parse_model(CreateRequest, {"job_id": J1, "domain": U, "host": "h1", "name": "s",
                                        field: bad})
        assert exc.value.field == field
    with pytest.raises(InvalidInput, match="domain"):
        parse_model(FsckRequest, {"job_id": J1, "host": "h1", "domain": "not-a-uuid"})


def test_claim_request_maps_an_id_to_its_first_job(store: Store) -> None:
    assert store.claim_request("r1", J1) is None
    assert store.claim_request("r1", J1) is None  # the same job again (redelivery)
    assert store.claim_request("r1", J2) == J1
    assert 0 < store.r.ttl(store.keys.request("r1")) <= 3600
    store.release_request("r1", J2)  # not its claim: kept
    assert store.claim_request("r1", J2) == J1
    store.release_request("r1", J1)
    assert store.claim_request("r1", J2) is None


def test_a_raw_duplicate_becomes_an_alias_of_the_first_job(store: Store) -> None:
    first = req(J1, request_id="r1")
    assert duplicate_submission(store, first, JobRecord.queued(first, 1.0)) is None
    store.create_job(JobRecord.queued(first, 1.0))
    second = req(J2, request_id="r1")
    alias = duplicate_submission(store, second, JobRecord.queued(second, 2.0))
    assert alias is not None and (alias.state, alias.duplicate_of) == ("succeeded", J1)
    assert store.get_job(J2).duplicate_of == J1
    assert store.get_job(J2, follow=True).job_id == J1
    # redelivered: the same answer, nothing new
    assert duplicate_submission(store, second, JobRecord.queued(second, 3.0)) == alias


def test_a_raw_duplicate_of_another_request_is_a_conflict(store: Store) -> None:
    first = req(J1, request_id="r1")
    duplicate_submission(store, first, JobRecord.queued(first, 1.0))
    store.create_job(JobRecord.queued(first, 1.0))
    other = req(J2, name="other", request_id="r1")
    out = duplicate_submission(store, other, JobRecord.queued(other, 2.0))
    assert out is not None and out.state == "failed" and out.error is not None
    assert (out.error.code, out.duplicate_of) == ("conflict", None)
    assert "request_id" in out.error.message


def test_fail_if_queued_and_the_cancel_flag(store: Store) -> None:
    with pytest.raises(UnknownJob):
        store.fail_if_queued(J1, {"code": "cancelled", "message": "m", "details": {}})
    store.create_job(JobRecord.queued(req(J1), 1.0))
    assert not store.cancel_requested(J1)
    store.request_cancel(J1)
    assert store.cancel_requested(J1)
    job = store.fail_if_queued(J1, {"code": "cancelled", "message": "m", "details": {}})
    assert job is not None and job.state == "failed" and job.error is not None
    assert job.error.code == "cancelled" and store.get_job(J1).state == "failed"
    assert store.fail_if_queued(J1, {"code": "x", "message": "m", "details": {}}) is None
    store.create_job(JobRecord.queued(req(J2), 1.0))
    store.update_job(J2, state="running")
    assert store.fail_if_queued(J2, {"code": "x", "message": "m", "details": {}}) is None
    assert store.get_job(J2).state == "running"


def entry(i: int, **kw: Any) -> AuditEntry:
    return AuditEntry(ts=float(i), who="bob", op="create", outcome="succeeded", name=f"s{i}",
                      **kw)


def test_audit_stream_is_capped_and_read_newest_last(store: Store) -> None:
    for i in range(30):
        store.add_audit(entry(i), maxlen=10, approximate=False)
    got = store.audit(5)
    assert [e.name for e in got] == ["s25", "s26", "s27", "s28", "s29"]
    assert store.r.xlen(store.keys.audit) == 10


def test_audit_file_is_append_only_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for i in range(3):
        auditlog.append(state, entry(i, job_id=str(_uuid.uuid4())))
    path = auditlog.audit_path(state)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with path.open("a") as fh:
        fh.write('{"torn": \n')  # a crash mid-line: skipped, never fatal
    auditlog.append(state, entry(3))
    assert [e.name for e in auditlog.read(state)] == ["s0", "s1", "s2", "s3"]
    assert [e.name for e in auditlog.read(state, 2)] == ["s2", "s3"]
    assert auditlog.read(tmp_path / "none") == []


def test_host_current_pointer(tmp_path: Path) -> None:
    assert read_current(tmp_path, U) is None
    write_current(tmp_path, U, "s1")
    assert read_current(tmp_path, U) == "s1"
    write_current(tmp_path, U, None)
    assert read_current(tmp_path, U) is None
    (tmp_path / "current" / f"{U}.json").write_text("not json")
    assert read_current(tmp_path, U) is None


def test_fsck_exit_codes() -> None:
    from domsnap.cli_ops import FSCK_PROBLEMS, FSCK_REPAIRED, fsck_exit_code

    def rep(*repaired: bool) -> FsckReport:
        return FsckReport(host="h", repair=True, findings=[
            FsckFinding(kind="orphan_file", domain=U, message="m", repaired=r) for r in repaired])

    assert fsck_exit_code([rep()]) == 0
    assert fsck_exit_code([rep(True), rep(True)]) == FSCK_REPAIRED == 12
    assert fsck_exit_code([rep(True), rep(False)]) == FSCK_PROBLEMS == 11


def test_docs_acl_shows_exactly_the_rules_the_code_builds() -> None:
    from domsnap.acl import acl_rules, setuser_command

    doc = (Path(__file__).resolve().parents[2] / "docs" / "acl.md").read_text()
    shown = [line for line in doc.splitlines() if line.startswith("ACL SETUSER ")]
    built = [" ".join(setuser_command(f"domsnap-{kind}", "PASSWORD", rules))
             for kind, rules in acl_rules("domsnap").items()]
    assert shown == built
