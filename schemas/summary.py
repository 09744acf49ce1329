"""The compact summary of a snapshot: what a listing shows, kept in Redis apart from the
full record so that listing a domain with many snapshots never fetches or parses
domain configs and disk lists (issue 11).

Stdlib only, on purpose: a short ``snapshot-list`` must not pay for importing pydantic.
A summary is derived from its record (:func:`summary_of`) and written in the same atomic
write as the record (``domsnap/store.py``); its JSON is one array of the fields below,
in order, ``v`` (the schema version) last
(``schemas/json/snapshot-summary.schema.json``).
"""

from __future__ import annotations

import json
import operator
from typing import Any, NamedTuple, Protocol

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


class SnapshotSummary(NamedTuple):
    """One snapshot as a listing shows it; in Redis, a JSON array of these fields in
    this order (a tuple: 10,000 of them are built in a few milliseconds, where objects
    with keys cost twice the parsing and 1.7x the memory).

    ``type``: the disk snapshot types of its disks, sorted and joined by ``+``
    (``internal``, ``external``, ``external+internal``); none for a snapshot without
    disks. ``size_bytes``: memory image plus the disk sizes that are known. ``v``: the
    schema version, last."""

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
    v: int = SCHEMA_VERSION

    def to_json(self) -> str:
        """Compact JSON: the fields as an array, in order."""
        return json.dumps(self, separators=(",", ":"))


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

    def __init__(self, message: str, version: Any = None) -> None:
        super().__init__(message)
        self.version = version


_N = len(SnapshotSummary._fields)
_ORDER = operator.itemgetter(1, 0)  # (created_at, name)


def _checked(item: Any) -> SnapshotSummary:
    if not isinstance(item, list) or not item:
        raise SummaryError(f"a summary is an array of {_N} fields")
    if item[-1] != SCHEMA_VERSION:
        raise SummaryError(f"schema_version {item[-1]} is not supported by this domsnap "
                           f"(speaks {SCHEMA_VERSION})", version=item[-1])
    if len(item) != _N:
        raise SummaryError(f"a summary is an array of {_N} fields")
    if not (isinstance(item[0], str) and isinstance(item[1], int | float)
            and isinstance(item[3], bool)):
        raise SummaryError("name, created_at or disk_only has the wrong type")
    return SnapshotSummary._make(item)


def parse_summaries(raws: list[str], *, sort: bool = False) -> list[SnapshotSummary]:
    """Many summaries from their JSON, in one ``json.loads`` (a call per summary costs
    more than the parsing itself at 10,000 of them); ``sort``: in creation order (ties
    by name), as the by-time index has them."""
    if not raws:
        return []
    try:
        data = json.loads("[" + ",".join(raws) + "]")
    except ValueError as exc:
        raise SummaryError(f"not JSON: {exc}") from None
    if len(data) != len(raws):  # a raw value was not one JSON value
        raise SummaryError("a summary is not one JSON value")
    out = [_checked(d) for d in data]
    if sort:
        out.sort(key=_ORDER)
    return out


class SnapshotPage(NamedTuple):
    """A page of a domain's snapshots in creation order (oldest first unless
    ``newest_first``): ``total`` counts all of them, ``offset`` is where it starts."""

    total: int
    offset: int
    current: str | None
    snapshots: list[SnapshotSummary]
    newest_first: bool = False
