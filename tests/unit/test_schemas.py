"""Request validation, record round trips, and the exported JSON Schema files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas import SCHEMA_VERSION, export
from schemas.config import DiskSpec, DomainConfig
from schemas.models import (
    CreateRequest,
    DeleteRequest,
    DiskChoice,
    DiskSnapshot,
    ErrorInfo,
    JobRecord,
    Request,
    RequestEnvelope,
    RevertRequest,
    SnapshotRecord,
)

JOB = "11111111-1111-4111-8111-111111111111"
DOM = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
REQUEST: TypeAdapter[CreateRequest | RevertRequest | DeleteRequest] = TypeAdapter(Request)


def body(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"op": "create", "job_id": JOB, "domain": DOM, "host": "h1",
                            "name": "snap1"}
    data.update(kw)
    return data


def errors_of(data: dict[str, Any]) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        REQUEST.validate_python(data)
    return list(info.value.errors())


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a/b", "../etc", "/abs", "..", ".", "", "x" * 129,
                                  "a b", "a\x00b", "snap\n"])
@pytest.mark.parametrize("op", ["create", "revert", "delete"])
def test_bad_snapshot_name_is_rejected_naming_name(op: str, name: str) -> None:
    errs = errors_of(body(op=op, name=name))
    assert len(errs) == 1
    assert errs[0]["loc"][-1] == "name"
    assert errs[0]["loc"][0] == op


def test_name_error_says_why() -> None:
    errs = errors_of(body(name="a/b"))
    assert "invalid snapshot name 'a/b'" in errs[0]["msg"]
    assert "'/'" in errs[0]["msg"]


@pytest.mark.parametrize("name", ["a", "x" * 128, "nightly-2026-11-25T01:00:00", "v1.2_rc:3",
                                  "...", ".hidden", "a..b"])
def test_good_snapshot_names(name: str) -> None:
    assert REQUEST.validate_python(body(name=name)).name == name


# ---------------------------------------------------------------- uuids and fields


@pytest.mark.parametrize("field", ["job_id", "domain"])
@pytest.mark.parametrize("value", ["", "not-a-uuid", "1234", DOM + "0", "domu"])
def test_non_uuid_rejected(field: str, value: str) -> None:
    errs = errors_of(body(**{field: value}))
    assert [e["loc"][-1] for e in errs] == [field]
    assert "not a UUID" in errs[0]["msg"]


def test_uuids_are_normalised() -> None:
    req = REQUEST.validate_python(body(job_id=JOB, domain="{" + DOM.upper() + "}"))
    assert (req.job_id, req.domain) == (JOB, DOM)


HEXJOB = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@pytest.mark.parametrize("spelling", [HEXJOB.upper(), "{" + HEXJOB + "}",
                                      HEXJOB.replace("-", ""), "urn:uuid:" + HEXJOB])
def test_job_ids_are_canonical_not_folded(spelling: str) -> None:
    """One job, one record: another spelling of a job id is refused (issue 7: an
    upper-case job_id was folded here while the submitter kept its own spelling, which
    split one job into two records)."""
    errs = errors_of(body(job_id=spelling))
    assert [e["loc"][-1] for e in errs] == ["job_id"]
    assert "canonical form" in errs[0]["msg"] and HEXJOB in errs[0]["msg"]


@pytest.mark.parametrize("op", ["create", "revert", "delete"])
def test_unknown_field_rejected(op: str) -> None:
    errs = errors_of(body(op=op, force=True))
    assert [(e["type"], e["loc"][-1]) for e in errs] == [("extra_forbidden", "force")]


def test_field_of_other_op_rejected() -> None:
    errs = errors_of(body(op="delete", disk_only=True))
    assert errs[0]["loc"][-1] == "disk_only"


@pytest.mark.parametrize("host", ["", "a b", "a/b", "h" * 254, "h;rm"])
def test_bad_host_rejected(host: str) -> None:
    errs = errors_of(body(host=host))
    assert [e["loc"][-1] for e in errs] == ["host"]


def test_schema_version_2_rejected_naming_the_version() -> None:
    errs = errors_of(body(schema_version=2))
    assert errs[0]["loc"][-1] == "schema_version"
    assert "schema_version 2" in errs[0]["msg"]
    assert f"speaks {SCHEMA_VERSION}" in errs[0]["msg"]
    assert REQUEST.validate_python(body(schema_version=SCHEMA_VERSION)).schema_version == 1


def test_missing_required_fields() -> None:
    data = body()
    del data["job_id"], data["host"]
    assert sorted(e["loc"][-1] for e in errors_of(data)) == ["host", "job_id"]


# ---------------------------------------------------------------- discriminator


@pytest.mark.parametrize(("op", "cls"), [("create", CreateRequest), ("revert", RevertRequest),
                                         ("delete", DeleteRequest)])
def test_discriminator_picks_the_model(op: str, cls: type[Any]) -> None:
    req = REQUEST.validate_python(body(op=op))
    assert type(req) is cls
    assert req.op == op
    env = RequestEnvelope.model_validate_json(json.dumps({"request": body(op=op)}))
    assert type(env.request) is cls


def test_discriminator_unknown_or_missing_op() -> None:
    errs = errors_of(body(op="merge"))
    assert errs[0]["type"] == "union_tag_invalid"
    data = body()
    del data["op"]
    assert errors_of(data)[0]["type"] == "union_tag_not_found"


def test_create_defaults_and_revert_start() -> None:
    req = REQUEST.validate_python(body())
    assert isinstance(req, CreateRequest)
    assert (req.type, req.disk_only, req.disks, req.memory_file) == ("internal", False, None, None)
    rev = REQUEST.validate_python(body(op="revert", start="paused"))
    assert isinstance(rev, RevertRequest) and rev.start == "paused"
    assert errors_of(body(op="revert", start="shutoff"))[0]["loc"][-1] == "start"


# ---------------------------------------------------------------- disks


# vdevs follow xl's rule ([A-Za-z0-9_]), as domsnap.xlcfg parses them
@pytest.mark.parametrize("vdev", ["xvda", "hda", "sdb", "vda", "xvdz9", "xvdaa", "hdc",
                                  "XVDA", "xvda_1", "1xvda"])
def test_diskchoice_vdev_ok(vdev: str) -> None:
    assert DiskChoice(vdev=vdev).vdev == vdev


@pytest.mark.parametrize("vdev", ["", "xvda/../x", "../xvda", "xvda,rw", "x" * 33,
                                  "xv da", "xvda\n", "xvd-a", "xvda.qcow2"])
def test_diskchoice_vdev_bad(vdev: str) -> None:
    with pytest.raises(ValidationError) as info:
        DiskChoice(vdev=vdev)
    assert info.value.errors()[0]["loc"] == ("vdev",)


def test_diskchoice_in_request() -> None:
    req = REQUEST.validate_python(body(type="external", disks=[
        {"vdev": "xvda", "type": "external", "target": "/srv/s/a.qcow2"}, {"vdev": "xvdb"}]))
    assert isinstance(req, CreateRequest) and req.disks is not None
    assert [d.vdev for d in req.disks] == ["xvda", "xvdb"]
    errs = errors_of(body(disks=[{"vdev": "xvda", "pool": "x"}]))
    assert errs[0]["loc"] == ("create", "disks", 0, "pool")
    errs = errors_of(body(disks=[{"vdev": "xvda"}, {"vdev": "xvdb", "format": "vmdk"}]))
    assert errs[0]["loc"] == ("create", "disks", 1, "format")


# ---------------------------------------------------------------- records


def _record() -> SnapshotRecord:
    return SnapshotRecord(
        name="s1", domain=DOM, domain_name="domu", host="h1", driver="xl",
        description="before upgrade", created_at=1795645837.25, domain_state="running",
        disk_only=False, memory_file=f"/var/lib/xen/snapshots/{DOM}/s1.save",
        memory_bytes=134217728, memory_save_ms=2859.0, pause_ms=4681.5, parent="s0",
        disks=[DiskSnapshot(vdev="xvda", type="external", format="qcow2",
                            file="/var/lib/xen/images/d0.qcow2",
                            overlay="/var/lib/xen/images/d0.ext1.qcow2", duration_ms=10.5,
                            size_bytes=217088)],
        domain_config=DomainConfig(
            name="domu", uuid=DOM, type="pv", memory=128, kernel="/boot/vmlinuz",
            disks=[DiskSpec(vdev="xvda", target="/var/lib/xen/images/d0.ext1.qcow2",
                            format="qcow2", backendtype="qdisk")],
            other={"on_reboot": "restart", "vif": ["bridge=xenbr0"], "maxmem": 256}),
        job_id=JOB,
    )


def test_snapshot_record_json_round_trip() -> None:
    record = _record()
    text = record.model_dump_json()
    again = SnapshotRecord.model_validate_json(text)
    assert again == record
    assert again.model_dump_json() == text
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION


def test_snapshot_record_rejects_other_version_and_extra() -> None:
    data = json.loads(_record().model_dump_json())
    with pytest.raises(ValidationError, match="schema_version 2"):
        SnapshotRecord.model_validate({**data, "schema_version": 2})
    with pytest.raises(ValidationError, match="extra"):
        SnapshotRecord.model_validate({**data, "unknown": 1})


def test_job_record_round_trip() -> None:
    job = JobRecord(job_id=JOB, op="create", domain=DOM, host="h1", name="s1",
                    submitted_at=1.0,
                    error=ErrorInfo(code="qmp", message="m", details={"a": 1}))
    assert JobRecord.model_validate_json(job.model_dump_json()) == job


# ---------------------------------------------------------------- exported JSON Schema


def test_exported_schema_files_are_up_to_date() -> None:
    assert export.check() == [], "run: python -m schemas.export"


def test_export_files_have_id_and_title() -> None:
    assert set(export.SCHEMAS) == {
        "request.schema.json", "job.schema.json", "snapshot.schema.json", "event.schema.json",
        "inventory.schema.json", "snapshot-config.schema.json", "domain-config.schema.json",
        "fsck-request.schema.json", "fsck-report.schema.json", "audit.schema.json",
        "policy.schema.json", "policy-run.schema.json", "snapshot-summary.schema.json"}
    for name in export.SCHEMAS:
        text = (export.OUT_DIR / name).read_text()
        assert text.endswith("}\n") and not text.endswith("\n\n")
        doc = json.loads(text)
        assert doc["$id"] == f"https://domsnap.invalid/schemas/{name}"
        assert isinstance(doc["title"], str) and doc["title"]
        assert text == json.dumps(doc, indent=2, sort_keys=True) + "\n"


def test_export_is_deterministic() -> None:
    assert export.render() == export.render()


def test_export_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(export.check(tmp_path)) == sorted(export.SCHEMAS)
    assert export.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert all(name in err for name in export.SCHEMAS)
    assert export.main(["--out", str(tmp_path)]) == 0
    assert export.check(tmp_path) == []
    assert export.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "job.schema.json").write_text("{}\n")
    assert export.check(tmp_path) == ["job.schema.json"]
    assert export.main(["--check", "--out", str(tmp_path)]) == 1
    assert "job.schema.json" in capsys.readouterr().err
    assert export.write(tmp_path) == ["job.schema.json"]
    assert export.write(tmp_path) == []


def _request_validator() -> Any:
    import jsonschema  # a test dependency: missing must fail, not skip
    schema = json.loads((export.OUT_DIR / "request.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_all_exported_schemas_are_valid_json_schema() -> None:
    import jsonschema  # a test dependency: missing must fail, not skip
    for name in export.SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(
            json.loads((export.OUT_DIR / name).read_text()))


def test_request_schema_accepts_sample_bodies() -> None:
    validator = _request_validator()
    for data in (body(), body(op="revert", start="running"), body(op="delete"),
                 body(type="external", disks=[{"vdev": "xvda", "target": "/srv/a.qcow2"}])):
        assert list(validator.iter_errors(data)) == []
        REQUEST.validate_python(data)  # and the models agree


def test_request_schema_rejects_structural_errors() -> None:
    validator = _request_validator()
    for data in (body(force=True), body(op="merge"), body(host="a b"),
                 body(disks=[{"vdev": "xvd-a"}])):
        assert list(validator.iter_errors(data)) != [], data


@pytest.mark.parametrize("name", ["a/b", "../etc/passwd", "", "x" * 129, "..", "."])
def test_request_schema_rejects_bad_name(name: str) -> None:
    """The exported schema must reject what the models reject: control planes
    validate requests against schemas/ before sending them."""
    validator = _request_validator()
    errs = list(validator.iter_errors(body(name=name)))
    assert errs, f"request.schema.json accepts the snapshot name {name!r}"


def test_request_schema_requires_op() -> None:
    """A body without ``op`` would match every request type: the schema must say which."""
    validator = _request_validator()
    data = body()
    data.pop("op", None)
    assert list(validator.iter_errors(data)) != []
