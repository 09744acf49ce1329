"""Backup policies, domain labels, snapshot protection and run history, in Redis.

Policies are plain records (``domsnap:policies``); the scheduler reads them on every
tick, so a change takes effect without a restart. Protection and labels are keyed by
domain. Like every Redis boundary of domsnap, redis-py errors become
StoreUnavailable here.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from domsnap.errors import Conflict, InvalidInput, NotFound, UnknownSnapshot
from domsnap.store import Store
from domsnap.storebase import _load, _translated
from domsnap.validation import parse_model
from schemas.models import DomainInfo
from schemas.policy import LABEL_KEY_RE, Policy, PolicyRun, check_policy_name

RUNS_KEPT = 50


def check_cron(expr: str) -> None:
    """Celery's own parser must accept the expression (ranges, names, steps)."""
    from celery.schedules import crontab

    try:
        crontab.from_string(expr)
    except (ValueError, IndexError, KeyError) as exc:
        raise InvalidInput(f"cron: {expr!r} is not a valid cron expression: {exc}",
                           field="cron") from None


def policy_period_s(policy: Policy, *, now: float) -> float:
    """Seconds between two runs: the interval, or the gap between a cron policy's next
    two firings after ``now`` (UTC arithmetic; what an alert's "2 periods" means)."""
    if policy.interval_s:
        return float(policy.interval_s)
    from celery.schedules import crontab

    assert policy.cron is not None
    minute, hour, dom, month, dow = policy.cron.split()

    def after(t: float) -> float:
        at = dt.datetime.fromtimestamp(t, dt.UTC)
        c = crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month,
                    day_of_week=dow, nowfun=lambda: at)
        c.tz = dt.UTC  # the cached tz of the app, fixed: no app needed
        return t + float(c.remaining_estimate(at).total_seconds())

    first = after(now)
    return max(60.0, after(first + 1) - first)


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``key=value`` words as a dict; the error names the bad word."""
    out: dict[str, str] = {}
    for i, pair in enumerate(pairs):
        key, sep, value = pair.partition("=")
        if not sep or not LABEL_KEY_RE.fullmatch(key) or len(value) > 253:
            raise InvalidInput(f"labels[{i}]: {pair!r} is not key=value (key: 1-63 of "
                               "A-Z a-z 0-9 _ . -)", field=f"labels[{i}]")
        out[key] = value
    return out


class PolicyStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.r: Any = store.r
        self.keys = store.keys

    # ------------------------------------------------------------ policies

    @_translated
    def create(self, data: dict[str, Any], *, replace: bool = False) -> Policy:
        """Validate and store a policy; an existing name is a Conflict unless ``replace``
        (which keeps its creation time and bumps its revision)."""
        policy = parse_model(Policy, data)
        if policy.cron:
            check_cron(policy.cron)
        old = self.r.hget(self.keys.policies, policy.name)
        if old is not None and not replace:
            raise Conflict(f"policy {policy.name!r} exists (policy-create --replace "
                           "changes it)", policy=policy.name)
        prev = _load(Policy, old, f"policy {policy.name}") if old is not None else None
        policy = policy.model_copy(update={
            "created_at": prev.created_at if prev else time.time(),
            "revision": prev.revision + 1 if prev else 1,
            "paused": prev.paused if prev else policy.paused})  # pause/resume change it
        self.r.hset(self.keys.policies, policy.name, policy.model_dump_json())
        return policy

    @_translated
    def get(self, name: str) -> Policy:
        check = _check_name(name)
        raw = self.r.hget(self.keys.policies, check)
        if raw is None:
            raise NotFound(f"no policy {name!r}", policy=name)
        return _load(Policy, raw, f"policy {name}")

    @_translated
    def all(self) -> list[Policy]:
        raw = self.r.hgetall(self.keys.policies)
        return sorted((_load(Policy, v, f"policy {k}") for k, v in raw.items()),
                      key=lambda p: p.name)

    @_translated
    def delete(self, name: str) -> None:
        self.get(name)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.policies, name)
            pipe.delete(self.keys.policy_jobs(name), self.keys.policy_running(name))
            pipe.execute()

    @_translated
    def set_paused(self, name: str, paused: bool) -> Policy:
        policy = self.get(name)
        new = policy.model_copy(update={"paused": paused, "revision": policy.revision + 1})
        self.r.hset(self.keys.policies, new.name, new.model_dump_json())
        return new

    # ------------------------------------------------------------ labels

    @_translated
    def set_labels(self, uuid: str, labels: dict[str, str], remove: list[str]) -> dict[str, str]:
        with self.r.pipeline(transaction=True) as pipe:
            if labels:
                pipe.hset(self.keys.labels(uuid), mapping=labels)
            if remove:
                pipe.hdel(self.keys.labels(uuid), *remove)
            pipe.execute()
        return self.labels(uuid)

    @_translated
    def labels(self, uuid: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(self.keys.labels(uuid)).items()}

    # ------------------------------------------------------------ protection

    @_translated
    def protect(self, uuid: str, name: str, on: bool) -> None:
        if on:
            self.store.get_snapshot(uuid, name)  # UnknownSnapshot
            self.r.sadd(self.keys.protected(uuid), name)
        elif not self.r.srem(self.keys.protected(uuid), name):
            raise UnknownSnapshot(f"snapshot {name!r} is not protected", name=name)

    @_translated
    def protected(self, uuid: str) -> set[str]:
        return {str(n) for n in self.r.smembers(self.keys.protected(uuid))}

    # ------------------------------------------------------------ runs

    @_translated
    def begin_run(self, policy: str, run_id: str, ttl_s: float) -> str | None:
        """Claim the policy's run slot (one run of a policy at a time); returns the run
        id already holding it, if any. The holder renews it (:meth:`renew_run`)."""
        key = self.keys.policy_running(policy)
        if self.r.set(key, run_id, nx=True, px=int(ttl_s * 1000)):
            return None
        other = self.r.get(key)
        return str(other) if other else "?"

    @_translated
    def renew_run(self, policy: str, run_id: str, ttl_s: float) -> None:
        key = self.keys.policy_running(policy)
        if self.r.get(key) == run_id:
            self.r.pexpire(key, int(ttl_s * 1000))

    @_translated
    def end_run(self, run: PolicyRun) -> None:
        with self.r.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.policy_runs(run.policy), run.model_dump_json())
            pipe.ltrim(self.keys.policy_runs(run.policy), 0, RUNS_KEPT - 1)
            if run.ok and run.domains:
                pipe.hset(self.keys.metrics_policy_success, run.policy, str(run.finished_at))
            pipe.execute()
        self.store._del_if(keys=[self.keys.policy_running(run.policy)], args=[run.run_id])

    @_translated
    def runs(self, policy: str, limit: int = 10) -> list[PolicyRun]:
        raw = self.r.lrange(self.keys.policy_runs(policy), 0, max(0, limit - 1))
        return [_load(PolicyRun, x, f"run of {policy}") for x in raw]

    @_translated
    def last_job(self, policy: str, uuid: str) -> str | None:
        value = self.r.hget(self.keys.policy_jobs(policy), uuid)
        return str(value) if value else None

    @_translated
    def set_last_job(self, policy: str, uuid: str, job_id: str) -> None:
        self.r.hset(self.keys.policy_jobs(policy), uuid, job_id)

    @_translated
    def policy_success(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.r.hgetall(
            self.keys.metrics_policy_success).items()}

    # ------------------------------------------------------------ selection

    def select(self, policy: Policy) -> list[tuple[str, DomainInfo]]:
        """(host, domain) for every domain the policy covers, from the published
        inventories (a host that is down still lists its domains: the fan-out skips
        them with that reason). Sorted by host, then name."""
        sel = policy.select
        wanted = {d.lower() for d in sel.domains} | set(sel.domains)
        out: dict[str, tuple[str, DomainInfo]] = {}
        for host in self.store.hosts():
            inv = self.store.inventory(host)
            if inv is None:
                continue
            for dom in inv.domains:
                owner = self.r.hget(self.keys.index_uuid, dom.uuid)
                if owner is not None and str(owner) != host:
                    continue  # moved: the newer host's inventory lists it
                hit = (dom.uuid in wanted or dom.name in wanted or host in sel.hosts)
                if not hit and sel.labels:
                    labels = self.labels(dom.uuid)
                    hit = all(labels.get(k) == v for k, v in sel.labels.items())
                if hit:
                    out[dom.uuid] = (host, dom)
        return sorted(out.values(), key=lambda hd: (hd[0], hd[1].name))


def _check_name(name: str) -> str:
    try:
        return check_policy_name(name)
    except ValueError as exc:
        raise InvalidInput(f"policy: {exc}", field="policy") from None

