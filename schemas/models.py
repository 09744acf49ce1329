"""Messages, results, records and events: the contract between control planes,
the queue, the workers and Redis. Every message and record carries
``schema_version``; a different version is rejected with SchemaMismatch, never
misread."""

from __future__ import annotations

import re
import uuid as _uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import SCHEMA_VERSION
from schemas.config import DiskFormat, DomainConfig, SnapshotType

SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
DomainState = Literal["running", "paused", "shutoff", "dying", "unknown"]
JobState = Literal["queued", "running", "succeeded", "failed"]
Operation = Literal["create", "revert", "delete"]


def check_snapshot_name(value: str) -> str:
    """A snapshot name is a file name component: it can never escape its directory."""
    if not SNAPSHOT_NAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"invalid snapshot name {value!r}: use 1-128 of A-Z a-z 0-9 _ . : - "
            "(no '/', not '.' or '..')"
        )
    return value


def check_uuid(value: str) -> str:
    try:
        return str(_uuid.UUID(value))
    except ValueError:
        raise ValueError(f"not a UUID: {value!r}") from None


class _Versioned(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=SCHEMA_VERSION,
                                json_schema_extra={"const": SCHEMA_VERSION})

    @field_validator("schema_version")
    @classmethod
    def _same_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is not supported by this domsnap "
                f"(speaks {SCHEMA_VERSION})"
            )
        return value


# ---------------------------------------------------------------- requests


def _require_op(schema: dict[str, Any]) -> None:
    """In JSON Schema ``op`` is required: it picks the request type (the Python models
    default it, since each entry task knows its own)."""
    required = schema.setdefault("required", [])
    if "op" not in required:
        required.insert(0, "op")


class _Request(_Versioned):
    job_id: str = Field(description="UUID chosen by the submitter; makes redelivery harmless",
                        json_schema_extra={"format": "uuid"})
    domain: str = Field(description="domain UUID (resolved by the submitter)",
                        json_schema_extra={"format": "uuid"})
    domain_name: str = ""
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(description="snapshot name: a file name component",
                      json_schema_extra={"pattern": SNAPSHOT_NAME_RE.pattern,
                                         "not": {"enum": [".", ".."]}})
    submitted_at: float = 0.0

    _uuid_fields = field_validator("job_id", "domain")(check_uuid)
    _name = field_validator("name")(check_snapshot_name)


class DiskChoice(BaseModel):
    """Which disks a create covers, and how (from xl.snapshot.cfg's disk=[...])."""

    model_config = ConfigDict(extra="forbid")

    vdev: str = Field(pattern=r"^[A-Za-z0-9_]{1,32}$")
    type: SnapshotType | None = None
    format: DiskFormat | None = None
    target: str | None = None


class CreateRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_require_op)

    op: Literal["create"] = "create"
    description: str | None = Field(default=None, max_length=4096)
    disk_only: bool = False
    memory_file: str | None = Field(
        default=None, description="absolute path under the snapshot roots; default NAME.save"
    )
    type: SnapshotType = "internal"
    disks: list[DiskChoice] | None = Field(
        default=None, description="exactly these disks; default every writable non-cdrom disk"
    )


class RevertRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_require_op)

    op: Literal["revert"] = "revert"
    start: Literal["running", "paused"] | None = Field(
        default=None,
        description="state after revert; default: the state the snapshot recorded "
        "(disk-only snapshots leave the domain shut off)",
    )


class DeleteRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_require_op)

    op: Literal["delete"] = "delete"


Request = Annotated[CreateRequest | RevertRequest | DeleteRequest, Field(discriminator="op")]


class RequestEnvelope(BaseModel):
    """Wrapper used to validate any request from its JSON body."""

    request: Request


# ---------------------------------------------------------------- inventory


class DiskInfo(BaseModel):
    vdev: str
    path: str | None
    format: DiskFormat = "raw"
    writable: bool = True
    cdrom: bool = False
    backend: str | None = None


class DomainInfo(BaseModel):
    uuid: str
    name: str
    state: DomainState
    disks: list[DiskInfo] = Field(default_factory=list)
    domid: int | None = None


class HostInventory(_Versioned):
    host: str
    driver: str
    published_at: float
    domains: list[DomainInfo]


# ---------------------------------------------------------------- records


DiskStrategy = Literal["qmp", "qemu-img", "save-restore", "lvm"]


class DiskSnapshot(BaseModel):
    vdev: str
    type: SnapshotType
    format: DiskFormat = Field(description="the format of `file`, as `qemu-img info` reports "
                               "it: internal: qcow2; external: the frozen image's format "
                               "(e.g. raw: the overlay's backing format); lvm: raw")
    file: str = Field(description="internal: the image holding the snapshot; "
                      "external: the frozen image with the snapshot's content "
                      "(lvm: the snapshot volume)")
    overlay: str | None = Field(default=None, description="external: the delta started at it "
                                "(lvm: none, the origin volume goes on)")
    overlay_format: DiskFormat | None = Field(
        default=None, description="the format of `overlay`: qcow2 for every overlay domsnap "
        "makes; none without an overlay (records of older versions: read as qcow2)")
    strategy: DiskStrategy | None = Field(
        default=None, description="how it was taken: qmp (one atomic transaction in the "
        "running domain's QEMU), qemu-img (domain shut off), save-restore (domain saved, "
        "disks taken offline, domain restored), lvm (LVM snapshot of a raw volume)")
    duration_ms: float = 0.0
    size_bytes: int | None = None

    @model_validator(mode="after")
    def _overlay_format(self) -> DiskSnapshot:
        """An overlay without a recorded format (a record of an older domsnap) is qcow2:
        domsnap never made another kind."""
        if self.overlay and self.overlay_format is None:
            self.overlay_format = "qcow2"
        elif not self.overlay and self.overlay_format is not None:
            raise ValueError("overlay_format: set, but the disk has no overlay")
        return self


class SnapshotRecord(_Versioned):
    name: str
    domain: str
    domain_name: str
    host: str
    driver: str
    description: str | None = None
    created_at: float
    domain_state: DomainState
    disk_only: bool
    memory_file: str | None = None
    memory_bytes: int | None = None
    memory_save_ms: float | None = None
    pause_ms: float | None = None
    parent: str | None = None
    disks: list[DiskSnapshot] = Field(default_factory=list)
    domain_config: DomainConfig
    job_id: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class JobRecord(_Versioned):
    job_id: str
    op: Operation
    domain: str
    domain_name: str = ""
    host: str
    name: str
    state: JobState = "queued"
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: ErrorInfo | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def queued(cls, req: CreateRequest | RevertRequest | DeleteRequest,
               submitted_at: float) -> JobRecord:
        """The record of a request that has just been accepted."""
        return cls(job_id=req.job_id, op=req.op, domain=req.domain,
                   domain_name=req.domain_name, host=req.host, name=req.name,
                   submitted_at=req.submitted_at or submitted_at)


class JobEvent(_Versioned):
    job_id: str
    seq: int
    ts: float
    step: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
