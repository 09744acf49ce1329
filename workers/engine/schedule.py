"""Scheduled backups: the fan-out of one policy run, the chain guard, and pruning.

Runs where the scheduler's task runs (or in ``domsnap prune``), never on a host: it
talks only to Redis and the queues. Every snapshot operation goes through the normal
entry tasks on the owning host's queue (``QueueOps``), so admission, locks, merges
and rollback are exactly those of a manual create or delete.

One run: select the domains (names, uuids, hosts, labels), then per domain, with at
most ``max_per_host`` domains of one host in progress at once (and one run of a
policy at a time: a firing while the last run goes on records every domain skipped):
skip it with a reason (host down, previous run still going, name taken), or
consolidate its external chain if it is too deep, create, wait, and prune it by the
retention rules. The run's
record (start, end, outcome per domain) goes into the policy's history.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from domsnap.errors import (
    DomainLocked,
    DomsnapError,
    HostUnavailable,
    OperationTimeout,
    SnapshotExists,
)
from domsnap.policies import PolicyStore
from domsnap.retention import Candidate, Decision, decide
from domsnap.store import Store
from domsnap.validation import parse_model
from schemas.models import CreateRequest, DeleteRequest, DomainInfo, JobRecord, SnapshotRecord
from schemas.policy import DomainOutcome, Policy, PolicyRun, render_name
from workers.routing import ENTRY_TASKS, host_queue

Clock = Callable[[], float]


class Ops(Protocol):
    """What the fan-out needs from the queue (``QueueOps``; tests may count calls)."""

    def create(self, host: str, info: DomainInfo, *, name: str, policy: str,
               disk_only: bool, type: str) -> str: ...

    def delete(self, host: str, info: DomainInfo, name: str) -> str: ...

    def job(self, job_id: str) -> JobRecord: ...


class QueueOps:
    """Submit through the owning host's queue, as ``domsnap.client.Client`` does."""

    def __init__(self, store: Store, app: Any) -> None:
        self.store = store
        self.app = app

    def create(self, host: str, info: DomainInfo, *, name: str, policy: str,
               disk_only: bool, type: str) -> str:
        now = time.time()
        req = parse_model(CreateRequest, {
            "job_id": str(uuidlib.uuid4()), "domain": info.uuid, "domain_name": info.name,
            "host": host, "name": name, "submitted_at": now, "disk_only": disk_only,
            "type": type, "policy": policy,
            "description": f"policy {policy}"})
        self._ready(host, info)
        self.store.reserve_name(info.uuid, req.name, req.job_id)
        try:
            return self._send(req)
        except BaseException:
            self.store.release_name(info.uuid, req.name, req.job_id)
            raise

    def delete(self, host: str, info: DomainInfo, name: str) -> str:
        req = parse_model(DeleteRequest, {
            "job_id": str(uuidlib.uuid4()), "domain": info.uuid, "domain_name": info.name,
            "host": host, "name": name, "submitted_at": time.time()})
        self._ready(host, info)
        return self._send(req)

    def job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    def _ready(self, host: str, info: DomainInfo) -> None:
        """The host is up and the domain free, or the request is refused before it is
        queued (a message for a dead host would only wait)."""
        if not self.store.host_alive(host):
            raise HostUnavailable(f"domain {info.name} lives on host {host}, which has no "
                                  "live worker", host=host, domain=info.uuid)
        owner = self.store.lock_owner(info.uuid)
        if owner:
            raise DomainLocked(f"domain {info.name} is busy: job {owner} is running a "
                               "snapshot operation on it", domain=info.uuid, job_id=owner)

    def _send(self, req: CreateRequest | DeleteRequest) -> str:
        from domsnap.errors import BackendError

        self.store.create_job(JobRecord.queued(req, time.time()))
        try:
            self.app.send_task(ENTRY_TASKS[req.op], args=[req.model_dump(mode="json")],
                               queue=host_queue(req.host), task_id=req.job_id)
        except Exception as exc:  # the broker boundary
            self.store.update_job(req.job_id, state="failed", error={
                "code": "backend", "message": f"could not enqueue: {exc}", "details": {}})
            raise BackendError(f"could not enqueue the request: {exc}") from exc
        return req.job_id


def wait_job(ops: Ops, job_id: str, timeout: float, *, sleep: Callable[[float], None]
             = time.sleep) -> JobRecord:
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        job = ops.job(job_id)
        if job.state in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            raise OperationTimeout(f"job {job_id} still {job.state} after {timeout:g} s",
                                   job_id=job_id)
        sleep(delay)
        delay = min(1.0, delay * 1.5)


# ---------------------------------------------------------------- pruning


@dataclass
class PrunePlan:
    policy: str
    domain: str
    domain_name: str
    decision: Decision
    deleted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def policy_records(records: list[SnapshotRecord], policy: str) -> list[SnapshotRecord]:
    """Only the snapshots the policy made: manual ones and other policies' are never its."""
    return [r for r in records if r.policy == policy]


def plan_prune(pstore: PolicyStore, policy: Policy, info: DomainInfo, *,
               now: float) -> PrunePlan:
    records = policy_records(pstore.store.list_snapshots(info.uuid), policy.name)
    protected = pstore.protected(info.uuid)
    cands = [Candidate(r.name, r.created_at, r.name in protected) for r in records]
    return PrunePlan(policy.name, info.uuid, info.name,
                     decide(cands, policy.retention, now=now, zone=policy.timezone))


def prune(pstore: PolicyStore, ops: Ops, policy: Policy, host: str, info: DomainInfo, *,
          now: float, dry_run: bool = False) -> PrunePlan:
    """Delete what the retention rules do not keep, oldest first, each through the
    normal delete (a merge for external snapshots). A delete that fails (e.g. a
    branch point) is reported and the rest go on."""
    plan = plan_prune(pstore, policy, info, now=now)
    if dry_run:
        return plan
    by_age = {r.name: r.created_at for r in pstore.store.list_snapshots(info.uuid)}
    for name in sorted(plan.decision.delete, key=lambda n: (by_age.get(n, 0.0), n)):
        try:
            job = wait_job(ops, ops.delete(host, info, name), policy.job_timeout_s)
        except DomsnapError as exc:
            plan.errors.append(f"{name}: {exc.message}")
            continue
        if job.state == "succeeded":
            plan.deleted.append(name)
        else:
            plan.errors.append(f"{name}: {job.error.message if job.error else 'failed'}")
    return plan


# ---------------------------------------------------------------- chain guard


def chain_links(records: list[SnapshotRecord]) -> dict[str, list[SnapshotRecord]]:
    """vdev -> the external snapshots of that disk, oldest first. After reverts
    (branches) this counts every branch: an upper bound on the active chain."""
    out: dict[str, list[SnapshotRecord]] = {}
    for rec in sorted(records, key=lambda r: (r.created_at, r.name)):
        for d in rec.disks:
            if d.type == "external" and d.strategy != "lvm":
                out.setdefault(d.vdev, []).append(rec)
    return out


def consolidate(pstore: PolicyStore, ops: Ops, policy: Policy, host: str,
                info: DomainInfo) -> tuple[list[str], str | None]:
    """Before an external snapshot: while a disk's chain has ``max_chain_depth`` links
    or more, delete (merge away) the policy's oldest unprotected snapshot on it.
    Returns (deleted names, reason to skip the domain or None)."""
    deleted: list[str] = []
    while True:
        records = pstore.store.list_snapshots(info.uuid)
        protected = pstore.protected(info.uuid)
        over = {v: recs for v, recs in chain_links(records).items()
                if len(recs) >= policy.max_chain_depth}
        if not over:
            return deleted, None
        vdev, recs = sorted(over.items())[0]
        victim = next((r for r in recs if r.policy == policy.name
                       and r.name not in protected), None)
        if victim is None:
            return deleted, (f"{vdev}: chain has {len(recs)} links (max "
                             f"{policy.max_chain_depth}) and none of them is an unprotected "
                             f"snapshot of policy {policy.name}")
        job = wait_job(ops, ops.delete(host, info, victim.name), policy.job_timeout_s)
        if job.state != "succeeded":
            msg = job.error.message if job.error else "failed"
            return deleted, f"{vdev}: consolidating {victim.name} failed: {msg}"
        deleted.append(victim.name)


# ---------------------------------------------------------------- one run


def _domain_run(pstore: PolicyStore, ops: Ops, policy: Policy, host: str, info: DomainInfo,
                started: float, clock: Clock) -> DomainOutcome:
    out = DomainOutcome(domain=info.uuid, domain_name=info.name, host=host, outcome="skipped")
    store = pstore.store
    if not store.host_alive(host):
        out.reason = f"host {host} is down"
        return out
    if info.state in ("dying", "unknown"):
        out.reason = f"domain is {info.state}"
        return out
    last = pstore.last_job(policy.name, info.uuid)
    if last:
        try:
            prev = store.get_job(last)
            if prev.state in ("queued", "running"):
                out.reason = f"previous run (job {last}) is still going"
                out.job_id = last
                return out
        except DomsnapError:
            pass  # expired: nothing is going
    try:
        if policy.type == "external":
            merged, why = consolidate(pstore, ops, policy, host, info)
            out.pruned.extend(merged)
            if why:
                out.reason = why
                return out
        name = render_name(policy.name_template, policy=policy.name, domain=info.name,
                           when=started, zone=policy.timezone)
        disk_only = policy.disk_only or info.state == "shutoff"
        job_id = ops.create(host, info, name=name, policy=policy.name, disk_only=disk_only,
                            type=policy.type)
    except (SnapshotExists, DomainLocked) as exc:
        out.reason = exc.message
        return out
    except DomsnapError as exc:
        out.outcome, out.reason = "failed", exc.message
        return out
    out.job_id, out.snapshot = job_id, name
    pstore.set_last_job(policy.name, info.uuid, job_id)
    try:
        job = wait_job(ops, job_id, policy.job_timeout_s)
    except DomsnapError as exc:
        out.outcome, out.reason = "failed", exc.message
        return out
    if job.state != "succeeded":
        out.outcome = "failed"
        out.reason = job.error.message if job.error else "failed"
        return out
    out.outcome = "succeeded"
    if disk_only and not policy.disk_only:
        out.reason = "domain shut off: disk-only snapshot"
    out.pause_ms = (job.result or {}).get("pause_ms")
    plan = prune(pstore, ops, policy, host, info, now=clock())
    out.pruned.extend(plan.deleted)
    if plan.errors:
        out.reason = "; ".join(["prune: " + e for e in plan.errors])
    return out


def run_policy(pstore: PolicyStore, ops: Ops, policy: Policy, *, clock: Clock = time.time,
               run_id: str | None = None, max_threads: int = 64) -> PolicyRun:
    """One firing of ``policy``: every selected domain gets one create on its owning
    host, at most ``max_per_host`` of one host at a time, then its pruning."""
    run = PolicyRun(run_id=run_id or str(uuidlib.uuid4()), policy=policy.name,
                    started_at=clock())
    stop = threading.Event()
    try:
        targets = pstore.select(policy)
        other = pstore.begin_run(policy.name, run.run_id, RUN_TTL_S)
        if other is not None:  # one run of a policy at a time: the caps hold across runs
            run.domains = [DomainOutcome(domain=i.uuid, domain_name=i.name, host=h,
                                         outcome="skipped",
                                         reason=f"previous run {other} is still going")
                           for h, i in targets]
            return run
        threading.Thread(target=_renew, args=(pstore, policy.name, run.run_id, stop),
                         daemon=True).start()
        limits: dict[str, threading.Semaphore] = {
            h: threading.Semaphore(policy.max_per_host) for h, _ in targets}

        def one(target: tuple[str, DomainInfo]) -> DomainOutcome:
            host, info = target
            with limits[host]:
                try:
                    return _domain_run(pstore, ops, policy, host, info, run.started_at, clock)
                except Exception as exc:  # noqa: BLE001 - one domain never stops the run
                    return DomainOutcome(domain=info.uuid, domain_name=info.name, host=host,
                                         outcome="failed", reason=f"{type(exc).__name__}: {exc}")

        targets = _round_robin(targets)
        if targets:
            with ThreadPoolExecutor(max_workers=max(1, min(len(targets), max_threads))) as ex:
                run.domains = list(ex.map(one, targets))
    except DomsnapError as exc:
        run.errors.append(exc.message)
    finally:
        stop.set()
        run.finished_at = clock()
        pstore.end_run(run)
    return run


RUN_TTL_S = 60.0  # the run slot outlives a dead scheduler worker by at most this


def _renew(pstore: PolicyStore, policy: str, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(RUN_TTL_S / 4):
        try:
            pstore.renew_run(policy, run_id, RUN_TTL_S)
        except DomsnapError:
            pass


def _round_robin(targets: list[tuple[str, DomainInfo]]) -> list[tuple[str, DomainInfo]]:
    """Interleave hosts, so one busy host's queue of domains never starves another's."""
    by_host: dict[str, list[tuple[str, DomainInfo]]] = {}
    for t in targets:
        by_host.setdefault(t[0], []).append(t)
    out: list[tuple[str, DomainInfo]] = []
    lists = list(by_host.values())
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out
