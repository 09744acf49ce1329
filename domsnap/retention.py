"""Retention: which of a policy's snapshots to keep and which to delete, and why.

Pure functions, no I/O, no clock: ``now`` is an argument, so months of simulated time
(DST changes included) are tested without waiting.

The rules follow Proxmox's prune semantics. Candidates are the policy's own
snapshots; protected ones are never deleted and count toward no rule. Walking the
candidates newest first:

- ``keep_last N`` keeps the N newest;
- then each of ``keep_hourly``, ``keep_daily``, ``keep_weekly``, ``keep_monthly``,
  ``keep_yearly`` (in that order) keeps the newest snapshot of each of its N newest
  periods, in the policy's time zone; a period that already holds a snapshot kept by an
  earlier rule is skipped and does not count.

Periods are local: a day is a calendar day (23 or 25 hours across DST), a week an ISO
week; an hour is a real hour, so the hour repeated when clocks go back is two hours.
``expire_after_s`` deletes any snapshot older than that, whatever kept it. No rule at
all keeps everything (a policy without retention never prunes).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from schemas.policy import Retention

RULES: tuple[str, ...] = ("hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class Candidate:
    name: str
    created_at: float
    protected: bool = False


@dataclass
class Decision:
    keep: dict[str, list[str]] = field(default_factory=dict)  # name -> rules that kept it
    delete: dict[str, str] = field(default_factory=dict)  # name -> why
    protected: list[str] = field(default_factory=list)


def period_key(rule: str, ts: float, zone: ZoneInfo) -> Hashable:
    """The period of ``rule`` that the instant ``ts`` falls in, in ``zone``."""
    local = dt.datetime.fromtimestamp(ts, zone)
    if rule == "hourly":
        # the UTC offset tells the repeated hour at a fall-back apart
        return (local.year, local.month, local.day, local.hour, local.utcoffset())
    if rule == "daily":
        return (local.year, local.month, local.day)
    if rule == "weekly":
        iso = local.isocalendar()
        return (iso.year, iso.week)
    if rule == "monthly":
        return (local.year, local.month)
    if rule == "yearly":
        return local.year
    raise ValueError(f"unknown retention rule {rule!r}")


def _newest_first(cands: Sequence[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (c.created_at, c.name), reverse=True)


def decide(candidates: Sequence[Candidate], retention: Retention, *, now: float,
           zone: str = "UTC") -> Decision:
    """Keep/delete for the snapshots of one policy on one domain."""
    tz = ZoneInfo(zone)
    out = Decision()
    ordered = _newest_first(candidates)
    out.protected = [c.name for c in ordered if c.protected]
    pool = [c for c in ordered if not c.protected]
    if not retention.has_rules and retention.expire_after_s is None:
        out.keep = {c.name: ["no retention rule"] for c in pool}
        return out
    kept: dict[str, list[str]] = {}
    if retention.keep_last:
        for c in pool[:retention.keep_last]:
            kept.setdefault(c.name, []).append("keep-last")
    for rule in RULES:
        n = getattr(retention, f"keep_{rule}")
        if not n:
            continue
        _mark(pool, kept, rule, n, functools.partial(period_key, rule, zone=tz))
    if not retention.has_rules:  # only an expiry: everything younger stays
        kept = {c.name: ["younger than expiry"] for c in pool}
    if retention.expire_after_s is not None:
        limit = now - retention.expire_after_s
        for c in pool:
            if c.created_at < limit and c.name in kept:
                del kept[c.name]
                out.delete[c.name] = f"expired (older than {retention.expire_after_s:g} s)"
    for c in pool:
        if c.name in kept:
            out.keep[c.name] = kept[c.name]
        elif c.name not in out.delete:
            out.delete[c.name] = "no rule keeps it"
    return out


def _mark(pool: list[Candidate], kept: dict[str, list[str]], rule: str, n: int,
          key: Callable[[float], Hashable]) -> None:
    covered = {key(c.created_at) for c in pool if c.name in kept}
    chosen: set[Hashable] = set()
    for c in pool:
        k = key(c.created_at)
        if k in covered or k in chosen:
            continue
        if len(chosen) >= n:
            break
        chosen.add(k)
        kept.setdefault(c.name, []).append(f"keep-{rule}")
