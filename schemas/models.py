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
# a caller's idempotency key, and who asked (an OS user, a service account, an e-mail)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
REQUESTED_BY_RE = re.compile(r"^[A-Za-z0-9_.@:+/=-]{1,128}$")
# suspended: shut down for a suspend and not resumed (what an `xl save` that died leaves:
# vCPUs frozen, memory and device model intact); shutdown: shut down for another reason
# but not destroyed yet, so its device model may still hold the images
DomainState = Literal["running", "paused", "shutoff", "suspended", "shutdown", "dying",
                      "unknown"]
JobState = Literal["queued", "running", "succeeded", "failed"]
Operation = Literal["create", "revert", "delete"]


def check_snapshot_name(value: str) -> str:
    """A snapshot name is a file name component: it can never escape its directory."""
    if not SNAPSHOT_NAME_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"invalid snapshot name {value[:140]!r}: use 1-128 of A-Z a-z 0-9 _ . : - "
            "(no '/', not '.' or '..')"
        )
    return value


def check_uuid(value: str) -> str:
    try:
        return str(_uuid.UUID(value))
    except ValueError:
        raise ValueError(f"not a UUID: {value[:80]!r}") from None


JOB_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4096  # bytes in a whole path, terminating NUL included (Linux PATH_MAX)


def check_job_id(value: str) -> str:
    """A job id is one canonical string, so one job is one record: a lower-case UUID in
    its hyphenated form (``str(uuid.uuid4())``); other spellings are refused, not folded."""
    if not JOB_ID_RE.fullmatch(value):
        canonical = check_uuid(value)  # "not a UUID" for what is no UUID at all
        raise ValueError(f"{value[:80]!r} is not a job id's canonical form: write it "
                         f"{canonical!r} (lower-case, hyphenated)")
    return value


def check_path_length(value: str | None) -> str | None:
    """A path the host will create: each component at most NAME_MAX bytes and the whole
    path under PATH_MAX, checked before anything is touched (the kernel would refuse it
    half-way through an operation)."""
    if value is None:
        return None
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_MAX:
        raise ValueError(f"path is {len(raw)} bytes long: at most {PATH_MAX - 1}")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            raise ValueError(f"path component {part[:40].decode('utf-8', 'replace')!r}... is "
                             f"{len(part)} bytes long: at most {NAME_MAX}")
    return value


def check_request_id(value: str | None) -> str | None:
    if value is not None and not REQUEST_ID_RE.fullmatch(value):
        raise ValueError(f"invalid request_id {value[:40]!r}: use 1-128 of A-Z a-z 0-9 _ . : -")
    return value


def check_requested_by(value: str | None) -> str | None:
    if value is not None and not REQUESTED_BY_RE.fullmatch(value):
        raise ValueError(f"invalid requested_by {value[:40]!r}: use 1-128 of "
                         "A-Z a-z 0-9 _ . @ : + / = -")
    return value


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
    job_id: str = Field(description="lower-case UUID chosen by the submitter; makes "
                        "redelivery harmless",
                        json_schema_extra={"pattern": JOB_ID_RE.pattern})
    domain: str = Field(description="domain UUID (resolved by the submitter)",
                        json_schema_extra={"format": "uuid"})
    domain_name: str = Field(default="", max_length=253)
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(description="snapshot name: a file name component",
                      json_schema_extra={"pattern": SNAPSHOT_NAME_RE.pattern,
                                         "not": {"enum": [".", ".."]}})
    submitted_at: float = 0.0
    request_id: str | None = Field(
        default=None, description="the caller's idempotency key: submitting a request with "
        "the same request_id again gives the job of the first one (for the job TTL)",
        json_schema_extra={"pattern": REQUEST_ID_RE.pattern})
    requested_by: str | None = Field(
        default=None, description="who asked (for the audit log): a user or service name",
        json_schema_extra={"pattern": REQUESTED_BY_RE.pattern})

    _job_id = field_validator("job_id")(check_job_id)
    _uuid_fields = field_validator("domain")(check_uuid)
    _name = field_validator("name")(check_snapshot_name)

    _request_id = field_validator("request_id")(check_request_id)
    _requested_by = field_validator("requested_by")(check_requested_by)


class DiskChoice(BaseModel):
    """Which disks a create covers, and how (from xl.snapshot.cfg's disk=[...])."""

    model_config = ConfigDict(extra="forbid")

    vdev: str = Field(pattern=r"^[A-Za-z0-9_]{1,32}$")
    type: SnapshotType | None = None
    format: DiskFormat | None = None
    target: str | None = Field(default=None, max_length=PATH_MAX - 1)

    _target_len = field_validator("target")(check_path_length)


class CreateRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_require_op)

    op: Literal["create"] = "create"
    description: str | None = Field(default=None, max_length=4096)
    disk_only: bool = False
    memory_file: str | None = Field(
        default=None, max_length=PATH_MAX - 1,
        description="absolute path under the snapshot roots; default NAME.save"
    )
    type: SnapshotType = "internal"
    disks: list[DiskChoice] | None = Field(
        default=None, description="exactly these disks; default every writable non-cdrom disk"
    )
    policy: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                               description="the backup policy that asked for it (pruning "
                               "touches only snapshots of a policy)")

    _memory_file_len = field_validator("memory_file")(check_path_length)


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
    memory_strategy: Literal["live", "save"] | None = Field(
        default=None, description="how the memory was saved (xl driver): live (xl migrate "
        "into domsnap's receiver: the guest paused for the last round only) or save (xl "
        "save -p: paused for the whole RAM write); none for a disk-only snapshot or "
        "another driver")
    memory_fallback: str | None = Field(
        default=None, description="why the memory was saved with xl save -p, not live")
    memory_page_records: int | None = Field(
        default=None, description="live: PAGE_DATA records in the memory stream")
    memory_rounds: int | None = Field(
        default=None, description="live: precopy rounds told apart in the memory stream "
        "(the last one sent while the guest was suspended)")
    parent: str | None = None
    disks: list[DiskSnapshot] = Field(default_factory=list)
    domain_config: DomainConfig
    job_id: str | None = None
    policy: str | None = None


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
    request_id: str | None = None
    requested_by: str | None = None
    duplicate_of: str | None = Field(
        default=None, description="this submission repeated the request_id of job "
        "duplicate_of: it was not run; read that job instead")

    @classmethod
    def queued(cls, req: CreateRequest | RevertRequest | DeleteRequest,
               submitted_at: float) -> JobRecord:
        """The record of a request that has just been accepted."""
        return cls(job_id=req.job_id, op=req.op, domain=req.domain,
                   domain_name=req.domain_name, host=req.host, name=req.name,
                   submitted_at=req.submitted_at or submitted_at, request_id=req.request_id,
                   requested_by=req.requested_by)


class JobEvent(_Versioned):
    job_id: str
    seq: int
    ts: float
    step: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------- fsck and audit


FsckKind = Literal[
    "record_missing",  # a sidecar no Redis record matches
    "sidecar_missing",  # a Redis record of this host without its sidecar
    "record_mismatch",  # Redis record and sidecar differ
    "file_missing",  # a file a record names does not exist
    "internal_missing",  # an internal snapshot a record names is not in its image
    "format_mismatch",  # the format recorded is not what qemu-img says
    "backing_mismatch",  # an overlay's backing file or format is not what the record says
    "orphan_file",  # a file in the snapshot dir that nothing names or needs
    "orphan_internal",  # an internal snapshot no record names
    "current_mismatch",  # the current pointer is missing, dangling or disagrees
    "parent_missing",  # a record's parent is no snapshot
    "unreadable",  # qemu-img could not read an image, or a sidecar does not parse
    "index_mismatch",  # the snapshot summaries / by-time index do not match the records
]


class FsckFinding(BaseModel):
    kind: FsckKind
    domain: str
    message: str
    snapshot: str | None = None
    path: str | None = None
    repairable: bool = False
    repaired: bool = False
    action: str | None = Field(default=None, description="what --repair did (or would do)")


class FsckRequest(_Versioned):
    """Body of ``domsnap.fsck`` on a host's queue: check one domain or all of the host's."""

    job_id: str = Field(json_schema_extra={"format": "uuid"})
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.-]+$")
    domain: str | None = Field(default=None, json_schema_extra={"format": "uuid"})
    repair: bool = False
    requested_by: str | None = Field(default=None,
                                     json_schema_extra={"pattern": REQUESTED_BY_RE.pattern})

    _job = field_validator("job_id")(check_uuid)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else check_uuid(value)

    _requested_by = field_validator("requested_by")(check_requested_by)


class FsckReport(_Versioned):
    host: str
    repair: bool
    domains: list[str] = Field(default_factory=list, description="domains checked")
    skipped: dict[str, str] = Field(default_factory=dict,
                                    description="domain -> why it was not checked")
    findings: list[FsckFinding] = Field(default_factory=list)

    @property
    def remaining(self) -> list[FsckFinding]:
        return [f for f in self.findings if not f.repaired]


AuditOp = Literal["create", "revert", "delete", "cancel", "fsck-repair", "domain-create",
                  "domain-start", "domain-destroy", "domain-undefine", "domain-pause",
                  "domain-unpause", "domain-on-shutdown"]


class AuditEntry(_Versioned):
    """One mutating operation: who, what, when, outcome (Redis stream + host JSONL)."""

    ts: float
    who: str
    op: AuditOp
    outcome: Literal["succeeded", "failed", "requested"]
    host: str | None = None
    domain: str | None = None
    name: str | None = None
    job_id: str | None = None
    error: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
