"""The compact summary of a snapshot: what a listing shows, kept in Redis apart from the
full record so that listing a domain with many snapshots never fetches or parses
domain configs and disk lists (issue 11).

Stdlib only, on purpose: a short ``snapshot-list`` must not pay for importing pydantic.
A summary is derived from its record (:func:`summary_of`) and written in the same atomic
write as the record (``domsnap/store.py``); the JSON is a flat object with the fields
below, ``null`` fields left out, and ``v`` the schema version
(``schemas/json/snapshot-summary.schema.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from schemas import SCHEMA_VERSION


class _Disk(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def size_bytes(self) -> int | None: ...


class _Record(Protocol):
    """The part of a :class:`schemas.models.SnapshotRecord` a summary is made from."""

    @property
    def name(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def domain_state(self) -> str: ...
    @property
    def disk_only(self) -> bool: ...
    @property
    def parent(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...
    @property
    def memory_bytes(self) -> int | None: ...
    @property
    def policy(self) -> str | None: ...
    @property
    def disks(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class SnapshotSummary:
    """One snapshot as a listing shows it.

    ``type``: the disk snapshot types of its disks, sorted and joined by ``+``
    (``internal``, ``external``, ``external+internal``); none for a snapshot without
    disks. ``size_bytes``: memory image plus the disk sizes that are known."""

    name: str
    created_at: float
    domain_state: str
    disk_only: bool
    parent: str | None = None
    description: str | None = None
    type: str | None = None
    disks: int = 0
    size_bytes: int | None = None
    policy: str | None = None
    v: int = field(default=SCHEMA_VERSION, metadata={"const": SCHEMA_VERSION})

    def to_json(self) -> str:
        """Compact JSON, ``null`` fields left out (memory per record counts at scale)."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None},
                          separators=(",", ":"))


def summary_of(rec: _Record) -> SnapshotSummary:
    """The summary of a full record (the one place that derives it)."""
    types = sorted({str(d.type) for d in rec.disks})
    sizes = [d.size_bytes for d in rec.disks if d.size_bytes is not None]
    if rec.memory_bytes is not None:
        sizes.append(rec.memory_bytes)
    return SnapshotSummary(
        name=rec.name, created_at=rec.created_at, domain_state=rec.domain_state,
        disk_only=rec.disk_only, parent=rec.parent, description=rec.description,
        type="+".join(types) or None, disks=len(rec.disks),
        size_bytes=sum(sizes) if sizes else None, policy=rec.policy)


class SummaryError(ValueError):
    """A summary that does not parse; ``version`` is set when it is of another schema
    version (the store turns these into SchemaMismatch / BackendError)."""

    def __init__(self, message: str, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


_FIELDS = frozenset(SnapshotSummary.__dataclass_fields__)


def _from_dict(data: Any) -> SnapshotSummary:
    if not isinstance(data, dict):
        raise SummaryError("a summary is a JSON object")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise SummaryError(f"schema_version {version} is not supported by this domsnap "
                           f"(speaks {SCHEMA_VERSION})", version=version)
    if not _FIELDS.issuperset(data):
        raise SummaryError(f"unknown fields {sorted(set(data) - _FIELDS)}")
    try:
        summary = SnapshotSummary(**data)
    except TypeError as exc:
        raise SummaryError(str(exc)) from None
    if not (isinstance(summary.name, str) and isinstance(summary.created_at, int | float)
            and isinstance(summary.disk_only, bool)):
        raise SummaryError("name, created_at or disk_only has the wrong type")
    return summary


def parse_summaries(raws: list[str]) -> list[SnapshotSummary]:
    """Many summaries from their JSON, in one ``json.loads`` (a call per summary costs
    more than the parsing itself at 10,000 of them)."""
    if not raws:
        return []
    try:
        data = json.loads("[" + ",".join(raws) + "]")
    except ValueError as exc:
        raise SummaryError(f"not JSON: {exc}") from None
    if len(data) != len(raws):  # a raw value was not one JSON value
        raise SummaryError("a summary is not one JSON value")
    return [_from_dict(d) for d in data]


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    """A page of a domain's snapshots in creation order (oldest first unless
    ``newest_first``): ``total`` counts all of them, ``offset`` is where it starts."""

    total: int
    offset: int
    current: str | None
    snapshots: list[SnapshotSummary]
    newest_first: bool = False
