"""Scheduled backups: policies (what to snapshot, when, how long to keep it), domain
labels, and the history of each policy run. No I/O here."""

from __future__ import annotations

import datetime as dt
import re
import string
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.config import SnapshotType
from schemas.models import _Versioned, check_snapshot_name

POLICY_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
# one cron field: numbers, names (jan, mon), *, ranges, steps and lists
_CRON_FIELD_RE = re.compile(r"^[A-Za-z0-9*/,-]+$")
TEMPLATE_FIELDS = ("policy", "domain", "time", "utc", "epoch")
DomainOutcomeState = Literal["succeeded", "failed", "skipped"]


def check_policy_name(value: str) -> str:
    if not POLICY_NAME_RE.fullmatch(value):
        raise ValueError(f"invalid policy name {value!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return value


def render_name(template: str, *, policy: str, domain: str, when: float, zone: str) -> str:
    """The snapshot name a policy gives a domain's snapshot taken at ``when``."""
    local = dt.datetime.fromtimestamp(when, ZoneInfo(zone))
    utc = dt.datetime.fromtimestamp(when, dt.UTC)
    name = template.format(policy=policy, domain=domain, time=local, utc=utc,
                           epoch=int(when))
    return check_snapshot_name(name)


class Retention(BaseModel):
    """Which of a policy's snapshots stay (Proxmox-style keep rules). Each rule keeps the
    newest snapshot of each of its N newest periods (hours, days, ISO weeks, months,
    years in the policy's time zone); a period already holding a kept snapshot does not
    count. ``expire_after_s`` deletes any snapshot older than that, whatever the rules.
    No rule at all keeps everything."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(default=None, ge=0, le=100_000)
    keep_hourly: int | None = Field(default=None, ge=0, le=100_000)
    keep_daily: int | None = Field(default=None, ge=0, le=100_000)
    keep_weekly: int | None = Field(default=None, ge=0, le=100_000)
    keep_monthly: int | None = Field(default=None, ge=0, le=100_000)
    keep_yearly: int | None = Field(default=None, ge=0, le=100_000)
    expire_after_s: float | None = Field(default=None, gt=0)

    @property
    def has_rules(self) -> bool:
        return any(v is not None for k, v in self.model_dump().items() if k.startswith("keep_"))


class Selector(BaseModel):
    """Which domains a policy covers: any named domain (name or uuid), every domain of a
    listed host, every domain whose labels include all of ``labels``. Empty selects none."""

    model_config = ConfigDict(extra="forbid")

    domains: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not LABEL_KEY_RE.fullmatch(key):
                raise ValueError(f"invalid label key {key!r}: use 1-63 of A-Z a-z 0-9 _ . -")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Selector:
        if not (self.domains or self.hosts or self.labels):
            raise ValueError("selects no domain: give domains, hosts or labels")
        return self


class Policy(_Versioned):
    """A scheduled backup policy (stored in Redis, editable while the scheduler runs)."""

    name: str
    cron: str | None = Field(default=None, description="5-field cron expression, in `timezone`")
    interval_s: float | None = Field(default=None, ge=1, description="or a plain interval")
    timezone: str = "UTC"
    select: Selector
    disk_only: bool = False
    type: SnapshotType = "internal"
    name_template: str = Field(
        default="{policy}-{utc:%Y%m%dT%H%M%SZ}",
        description="str.format fields: policy, domain, time (local datetime), utc, epoch")
    retention: Retention = Field(default_factory=Retention)
    missed: Literal["skip", "run-once"] = Field(
        default="run-once", description="a run missed while no scheduler ran: run it once "
        "when the scheduler is back, or skip it and wait for the next one")
    max_per_host: int = Field(default=4, ge=1, le=1000,
                              description="creates of this policy in flight per host at once")
    max_chain_depth: int = Field(default=10, ge=1, le=1000,
                                 description="external: links per disk before consolidation")
    job_timeout_s: float = Field(default=3600, gt=0)
    paused: bool = False
    created_at: float = 0.0
    revision: int = 0

    _name = field_validator("name")(check_policy_name)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD_RE.fullmatch(f) for f in fields):
            raise ValueError(f"invalid cron expression {value!r}: want 5 fields "
                             "(minute hour day-of-month month day-of-week)")
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                             "Europe/Berlin)") from None
        return value

    @field_validator("name_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"name template {value!r}: {exc}") from None
        for _, field, _, _ in parsed:
            if field is not None and field not in TEMPLATE_FIELDS:
                raise ValueError(f"unknown field {{{field}}} in name template: use "
                                 f"{', '.join(TEMPLATE_FIELDS)} (no attributes or indexes)")
        try:
            render_name(value, policy="p", domain="d", when=0.0, zone="UTC")
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"name template {value!r} does not make a snapshot name: "
                             f"{exc}") from None
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> Policy:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give exactly one of cron and interval_s")
        return self


class DomainOutcome(BaseModel):
    domain: str
    domain_name: str = ""
    host: str | None = None
    outcome: DomainOutcomeState
    reason: str | None = None
    job_id: str | None = None
    snapshot: str | None = None
    pause_ms: float | None = None
    pruned: list[str] = Field(default_factory=list)


class PolicyRun(_Versioned):
    """One firing of a policy: what each selected domain got, and why."""

    run_id: str
    policy: str
    started_at: float
    finished_at: float | None = None
    domains: list[DomainOutcome] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)

    @property
    def pause_window(self) -> tuple[float, float] | None:
        """(first, last) pause of the run's domains in ms, or None."""
        pauses = [d.pause_ms for d in self.domains if d.pause_ms is not None]
        return (min(pauses), max(pauses)) if pauses else None

    @property
    def ok(self) -> bool:
        return self.finished_at is not None and not self.errors and all(
            d.outcome == "succeeded" for d in self.domains)
