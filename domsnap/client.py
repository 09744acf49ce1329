"""The Python client for control planes and the CLI: submit, wait, list.

The submitting side never runs hypervisor work: it resolves the owning host
from the inventory in Redis, validates the request, claims the snapshot name,
records the job and enqueues one JSON message on that host's queue.
"""

from __future__ import annotations

import getpass
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any, Literal

from domsnap.errors import (
    BackendError,
    Conflict,
    DomainLocked,
    DomsnapError,
    InvalidInput,
    OperationTimeout,
)
from domsnap.policies import PolicyStore
from domsnap.settings import Settings, get_settings
from domsnap.store import Store
from domsnap.validation import parse_model
from schemas.config import SnapshotConfig
from schemas.models import (
    REQUESTED_BY_RE,
    AuditEntry,
    CreateRequest,
    DeleteRequest,
    DiskChoice,
    DomainInfo,
    FsckReport,
    FsckRequest,
    JobEvent,
    JobRecord,
    RevertRequest,
    SnapshotRecord,
)
from schemas.summary import SnapshotPage, SnapshotSummary

EventHandler = Callable[[JobEvent], None]
AnyRequest = CreateRequest | RevertRequest | DeleteRequest


def os_user() -> str:
    """Who runs this process, for ``requested_by`` (``unknown`` if it has no valid name)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
    return name if REQUESTED_BY_RE.fullmatch(name) else "unknown"


class Client:
    """Submit snapshot operations and read their results and records."""

    def __init__(self, settings: Settings | None = None, store: Store | None = None) -> None:
        self.settings = settings or get_settings()
        self.store = store or Store.from_url(self.settings.redis_url,
                                             prefix=self.settings.key_prefix,
                                             job_ttl_s=self.settings.job_ttl_s)
        self._celery: Any = None
        self._direct_client: Any = None
        self._own_store = store is None  # its Redis is settings.redis_url's

    # ------------------------------------------------------------ reading

    def resolve(self, domain: str) -> tuple[str, DomainInfo]:
        """(owning host, domain info) for a domain name or uuid."""
        return self.store.resolve_domain(domain)

    def snapshots(self, domain: str) -> list[SnapshotRecord]:
        _, info = self._find(domain)
        return self.store.list_snapshots(info.uuid)

    def snapshot(self, domain: str, name: str) -> SnapshotRecord:
        _, info = self._find(domain)
        return self.store.get_snapshot(info.uuid, name)

    def snapshot_page(self, domain: str, *, offset: int = 0, limit: int | None = None,
                      newest_first: bool = False) -> SnapshotPage:
        """A page of the domain's snapshot summaries in creation order, with the total
        and the current snapshot: what a listing needs, at a cost that does not grow
        with the number of snapshots (:meth:`snapshots` reads every full record)."""
        _, info = self._find(domain)
        return self.store.snapshot_page(info.uuid, offset=offset, limit=limit,
                                        newest_first=newest_first)

    def snapshot_summary(self, domain: str, name: str) -> SnapshotSummary:
        """One snapshot's summary (UnknownSnapshot if there is none)."""
        _, info = self._find(domain)
        return self.store.snapshot_summary(info.uuid, name)

    def snapshot_records(self, domain: str, names: list[str]) -> list[SnapshotRecord]:
        """The full records of ``names`` (e.g. a page's), in that order; names deleted
        meanwhile are left out."""
        _, info = self._find(domain)
        return self.store.get_snapshots(info.uuid, names)

    def current(self, domain: str) -> str | None:
        _, info = self._find(domain)
        return self.store.current(info.uuid)

    def job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id, follow=True)

    def _find(self, domain: str) -> tuple[str, DomainInfo]:
        """Like resolve, but a host that is down does not hide its records."""
        return self.store.find_domain(domain)

    # ------------------------------------------------------------ submitting

    def create(
        self,
        domain: str,
        *,
        name: str | None = None,
        description: str | None = None,
        disk_only: bool = False,
        memory_file: str | None = None,
        type: Literal["internal", "external"] | None = None,
        disks: list[DiskChoice] | None = None,
        config: SnapshotConfig | None = None,
        request_id: str | None = None,
        requested_by: str | None = None,
        policy: str | None = None,
    ) -> str:
        """Enqueue a snapshot create; returns the job id. The name defaults to the epoch
        second, fixed here so a redelivered message cannot make a second snapshot."""
        if config is not None:
            if config.memory is False:
                disk_only = True
            elif isinstance(config.memory, str):
                if disk_only:
                    raise InvalidInput("memory: a memory file was given for a disk-only "
                                       "snapshot", field="memory")
                memory_file = memory_file or config.memory
            name = name if name is not None else config.name
            description = description if description is not None else config.description
            type = type or config.type
            if disks is None and config.disks is not None:
                disks = [DiskChoice(**d.model_dump()) for d in config.disks]
        host, info = self.resolve(domain)
        now = time.time()
        req: CreateRequest = parse_model(CreateRequest, {
            "job_id": str(uuidlib.uuid4()), "domain": info.uuid, "domain_name": info.name,
            "host": host, "name": str(int(now)) if name is None else name, "submitted_at": now,
            "description": description, "disk_only": disk_only, "memory_file": memory_file,
            "type": type or "internal",
            "disks": [d.model_dump() for d in disks] if disks is not None else None,
            "request_id": request_id, "requested_by": requested_by or os_user(),
            "policy": policy})

        def submit() -> str:
            self._check_unlocked(info)
            self.store.claim_name(info.uuid, req.name, req.job_id)
            try:
                return self._enqueue(req)
            except BaseException:
                self.store.release_name(info.uuid, req.name, req.job_id)
                raise

        return self._once(req, submit)

    def revert(self, domain: str, name: str,
               start: Literal["running", "paused"] | None = None, *,
               request_id: str | None = None, requested_by: str | None = None) -> str:
        host, info = self.resolve(domain)
        req: RevertRequest = parse_model(RevertRequest, {
            "job_id": str(uuidlib.uuid4()), "domain": info.uuid, "domain_name": info.name,
            "host": host, "name": name, "submitted_at": time.time(), "start": start,
            "request_id": request_id, "requested_by": requested_by or os_user()})
        return self._submit_for_snapshot(req, info)

    def delete(self, domain: str, name: str, *, request_id: str | None = None,
               requested_by: str | None = None) -> str:
        host, info = self.resolve(domain)
        req: DeleteRequest = parse_model(DeleteRequest, {
            "job_id": str(uuidlib.uuid4()), "domain": info.uuid, "domain_name": info.name,
            "host": host, "name": name, "submitted_at": time.time(),
            "request_id": request_id, "requested_by": requested_by or os_user()})
        return self._submit_for_snapshot(req, info)

    def _submit_for_snapshot(self, req: RevertRequest | DeleteRequest, info: DomainInfo) -> str:
        """Enqueue a revert or delete: its snapshot must exist and the domain be free."""
        def submit() -> str:
            self.store.get_snapshot(info.uuid, req.name)
            self._check_unlocked(info)
            return self._enqueue(req)

        return self._once(req, submit)

    def _once(self, req: AnyRequest, submit: Callable[[], str]) -> str:
        """Submit ``req`` unless its request id was seen: then the first request's job id.

        The request id is claimed first (SET NX); if this submission then fails before
        its job exists, the claim is dropped again so a retry can go through."""
        if req.request_id is None:
            return submit()
        first = self.store.claim_request(req.request_id, req.job_id)
        if first is not None:
            return self._same_request(first, req)
        try:
            return submit()
        except BaseException:
            self.store.release_request(req.request_id, req.job_id)
            raise

    def _same_request(self, job_id: str, req: AnyRequest) -> str:
        """The first job of a repeated request id; a different request with it is a
        conflict (a caller's bug, never silently the wrong job)."""
        try:
            first = self.store.get_job(job_id)
        except DomsnapError:
            return job_id  # the first submitter has claimed the id but not written its job yet
        if (first.op, first.domain, first.name) != (req.op, req.domain, req.name):
            raise Conflict(f"request_id {req.request_id!r} was already used by job {job_id} "
                           f"({first.op} of {first.name!r} on {first.domain_name or first.domain})",
                           field="request_id", job_id=job_id)
        return job_id

    def cancel(self, job_id: str, *, requested_by: str | None = None) -> JobRecord:
        """Cancel a job: a queued one fails at once (it never runs; a create's name is
        released); a running one is stopped at its next safe point and rolled back by its
        worker. Returns the job record as it is now. Conflict if the job has ended."""
        from domsnap.errors import Cancelled

        job = self.store.get_job(job_id, follow=True)
        if job.state in ("succeeded", "failed"):
            raise Conflict(f"job {job.job_id} has ended ({job.state}); nothing to cancel",
                           job_id=job.job_id)
        who = requested_by or os_user()
        self.store.request_cancel(job.job_id)
        err = Cancelled(f"cancelled by {who} before it ran", job_id=job.job_id)
        ended = self.store.fail_if_queued(job.job_id, err.to_dict())
        if ended is not None and job.op == "create":
            self.store.release_name(job.domain, job.name, job.job_id)
        state = "cancelled" if ended is not None else "requested"
        self.store.add_audit(AuditEntry(
            ts=time.time(), who=who, op="cancel", outcome="succeeded" if ended else "requested",
            host=job.host, domain=job.domain, name=job.name, job_id=job.job_id,
            details={"job_op": job.op, "was": job.state, "cancel": state}))
        return ended or self.store.get_job(job.job_id)

    # ------------------------------------------------------------ scheduled backups

    @property
    def policies(self) -> PolicyStore:
        """Policies, labels, protection and run history (:mod:`domsnap.policies`)."""
        return PolicyStore(self.store)

    def protect(self, domain: str, name: str, on: bool = True) -> None:
        """Protect a snapshot from pruning (``on=False``: unprotect it)."""
        _, info = self._find(domain)
        self.policies.protect(info.uuid, name, on)

    def label(self, domain: str, labels: dict[str, str],
              remove: list[str] | None = None) -> dict[str, str]:
        _, info = self._find(domain)
        return self.policies.set_labels(info.uuid, labels, remove or [])

    def prune(self, *, policy: str | None = None, domain: str | None = None,
              dry_run: bool = False, now: float | None = None) -> list[Any]:
        """Apply the retention of one policy (or all) to one domain (or the policy's
        domains); deletes go through the normal delete. Returns one
        :class:`workers.engine.schedule.PrunePlan` per (policy, domain)."""
        from workers.engine.schedule import QueueOps, prune

        pst = self.policies
        ops = QueueOps(self.store, self._app())
        plans = []
        for pol in [pst.get(policy)] if policy else pst.all():
            targets = [self._find(domain)] if domain else pst.select(pol)
            for host, info in targets:
                plans.append(prune(pst, ops, pol, host, info, now=now or time.time(),
                                   dry_run=dry_run))
        return plans

    def _app(self) -> Any:
        """This client's Celery app (its own broker settings), made on first use."""
        if self._celery is None:
            from workers.app import make_app

            self._celery = make_app(self.settings)
        return self._celery

    @property
    def _direct(self) -> Any:
        """The broker's Redis client when requests are written directly (a plain
        ``redis://`` broker and ``enqueue = "direct"``), else None: Celery sends."""
        if self._direct_client is None:
            url = self.settings.broker_url or self.settings.redis_url
            from domsnap.enqueue import direct_ok

            if self.settings.enqueue != "direct" or not direct_ok(url):
                return None
            if url == self.settings.redis_url and self._own_store:
                self._direct_client = self.store.r
            else:
                import redis

                self._direct_client = redis.Redis.from_url(url, socket_timeout=10,
                                                           socket_connect_timeout=5)
        return self._direct_client

    def _check_unlocked(self, info: DomainInfo) -> None:
        owner = self.store.lock_owner(info.uuid)
        if owner:
            raise DomainLocked(f"domain {info.name} is busy: job {owner} is running a snapshot "
                               "operation on it", domain=info.uuid, job_id=owner)

    def _enqueue(self, req: CreateRequest | RevertRequest | DeleteRequest) -> str:
        from workers.routing import ENTRY_TASKS, host_queue

        task, queue = ENTRY_TASKS[req.op], host_queue(req.host)
        args = [req.model_dump(mode="json")]
        self.store.create_job(JobRecord.queued(req, time.time()))
        try:
            if self._direct is not None:  # a redis:// broker: no Celery (domsnap.enqueue)
                from domsnap import enqueue

                enqueue.push(self._direct, queue, enqueue.envelope(task, req.job_id, args, queue))
            else:
                self._app().send_task(task, args=args, queue=queue, task_id=req.job_id)
        except Exception as exc:  # the broker boundary: kombu/redis/amqp errors
            self.store.update_job(req.job_id, state="failed", error={
                "code": "backend", "message": f"could not enqueue: {exc}", "details": {}})
            raise BackendError(f"could not enqueue the request: {exc}") from exc
        return req.job_id

    # ------------------------------------------------------------ fsck, audit

    def fsck(self, *, domain: str | None = None, host: str | None = None, repair: bool = False,
             timeout: float = 600.0, requested_by: str | None = None) -> list[FsckReport]:
        """Run fsck on the host(s) that own the files, through their queues: one domain
        (on its owning host), one host, or every live host. One report per host."""
        from domsnap.errors import HostUnavailable
        from workers.routing import TASK_FSCK, host_queue

        targets: list[tuple[str, str | None]]
        if domain is not None:
            owner, info = self.resolve(domain)
            targets = [(owner, info.uuid)]
        elif host is not None:
            if not self.store.host_alive(host):
                raise HostUnavailable(f"host {host} has no live worker", host=host)
            targets = [(host, None)]
        else:
            targets = [(h, None) for h in self.store.hosts() if self.store.host_alive(h)]
        app = self._app()
        pending = []
        for h, uuid in targets:
            req: FsckRequest = parse_model(FsckRequest, {
                "job_id": str(uuidlib.uuid4()), "host": h, "domain": uuid, "repair": repair,
                "requested_by": requested_by or os_user()})
            try:
                pending.append(app.send_task(TASK_FSCK, args=[req.model_dump(mode="json")],
                                             queue=host_queue(h), task_id=req.job_id))
            except Exception as exc:  # the broker boundary
                raise BackendError(f"could not enqueue fsck for {h}: {exc}") from exc
        reports = []
        deadline = time.monotonic() + timeout
        for res in pending:
            try:
                out = res.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # celery's TimeoutError, a task that raised
                if type(exc).__name__ == "TimeoutError":
                    raise OperationTimeout(f"fsck did not answer within {timeout} s") from exc
                raise BackendError(f"fsck failed on its host: {exc}") from exc
            finally:
                res.forget()
            if isinstance(out, dict) and "error" in out:
                from domsnap.errors import from_dict

                raise from_dict(out["error"])
            reports.append(parse_model(FsckReport, out))
        return reports

    def audit(self, limit: int = 50) -> list[AuditEntry]:
        return self.store.audit(limit)

    # ------------------------------------------------------------ waiting

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_event: EventHandler | None = None, interval: float = 0.1,
             safety_s: float = 1.0) -> JobRecord:
        """Block until the job ends; ``on_event`` sees each progress event once.

        Woken by the job's notify channel (:mod:`domsnap.jobwatch`): the caller hears
        of the end within a round trip. It re-reads at least every ``safety_s``
        regardless, and where pub/sub is refused it polls every ``interval``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job_id = self.store.get_job(job_id, follow=True).job_id  # a repeated request id
        seen = 0
        with self.store.watch_job(job_id) as watch:  # subscribed before the first read
            period = safety_s if watch.subscribed else interval
            while True:
                if on_event is not None:
                    events = self.store.events(job_id, seen)
                    for ev in events:
                        on_event(ev)
                    seen += len(events)
                job = self.store.get_job(job_id, follow=True)
                if job.state in ("succeeded", "failed"):
                    if on_event is not None:
                        for ev in self.store.events(job_id, seen):
                            on_event(ev)
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise OperationTimeout(f"job {job_id} still {job.state} after {timeout} s",
                                           job_id=job_id)
                watch.wait(period if left is None else min(period, left))
