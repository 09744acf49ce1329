"""Repair on a host: Redis and sidecars agree, and nothing a dead worker left
half-done stays so.

- :func:`reconcile`: every sidecar record is in Redis and every Redis record of a
  domain of this host has its sidecar (invariant 6); a record restored from its
  sidecar that was made on top of the domain's current snapshot becomes current.
- :func:`recover`: each journal left by a dead worker is an operation that never
  ended. A create is rolled back (the domain first brought back to the run state
  it had, migration cancelled, block nodes active again); a revert or a delete is
  carried forward from the phase its journal reached (each phase is idempotent);
  a request that never got past admission is failed. Runs at worker start-up, when
  a continuation step is delivered again after its process died
  (:func:`guarded`), and from the host's pause guard (:mod:`workers.guard`).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from domsnap.errors import DomainLocked, DomsnapError, OperationFailed, UnknownSnapshot
from schemas.config import DomainConfig
from schemas.models import JOB_ID_RE, CreateRequest, DeleteRequest, ErrorInfo, RevertRequest
from workers.drivers.base import DiskOp
from workers.engine import jobs
from workers.engine.diskops import undo_offline
from workers.host import Host

log = logging.getLogger("domsnap.recovery")

DEAD_WORKER = "the worker stopped during the operation"


def reconcile(host: Host) -> None:
    """Sidecars and Redis records agree (either restores the other), and the snapshot
    summary index of the host's domains covers their records."""
    side = sorted(host.files.sidecars(), key=lambda r: (r.created_at, r.name))
    for rec in side:
        try:
            host.store.get_snapshot(rec.domain, rec.name)
        except UnknownSnapshot:
            # Made on top of the domain's current snapshot (or the first one): the
            # worker died between the sidecar and the Redis commit, which would have
            # made it current. Otherwise it is an older record Redis lost.
            current = host.store.current(rec.domain)
            now = current is None or rec.parent == current
            log.info("restoring record %s/%s from its sidecar%s", rec.domain, rec.name,
                     " (current)" if now else "")
            host.store.put_snapshots(rec.domain, [rec], current=rec.name if now else False)
    have = {(r.domain, r.name) for r in side}
    domains = host.driver.list_domains()
    for uuid in sorted({d.uuid for d in domains} | {r.domain for r in side}):
        # records from before the summary index, or of an older worker: fill it (only
        # when the counts disagree; fsck compares in full)
        if not host.store.index_complete(uuid) and host.store.rebuild_index(uuid):
            log.info("rebuilt the snapshot summary index of %s", uuid)
    for dom in domains:
        for rec in host.store.list_snapshots(dom.uuid):
            if rec.host == host.name and (rec.domain, rec.name) not in have:
                log.info("writing missing sidecar of %s/%s", rec.domain, rec.name)
                host.files.write_sidecar(rec)


@contextmanager
def job_lock(host: Host, job_id: str, *, shared: bool = False,
             blocking: bool = True) -> Iterator[bool]:
    """Hold the job's host-local lock: a second delivery of a step waits here while the
    first one runs, and gets it at once if the first one's process died (the kernel
    drops a dead process's flock). So "cut short" and "still running" never mix up.
    Per-disk steps of one job hold it shared (they run in parallel); the finishing
    step and recovery hold it exclusive. Yields False if ``blocking`` is off and the
    lock is held elsewhere."""
    host.files.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(host.files.lock_dir / f"{job_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextmanager
def renewing(host: Host, req: jobs.AnyRequest, plan: dict[str, Any]) -> Iterator[None]:
    """Renew the domain lock's lease every third of it while the work inside runs; a
    lease found lost is logged (the fenced commits will refuse this holder)."""
    fence = jobs.fence_of(req, plan)
    if fence is None:
        yield
        return
    ttl = host.settings.lock_ttl_s
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(max(1.0, ttl / 3)):
            try:
                if not host.store.renew_lock(fence, req.domain, ttl):
                    log.error("job %s lost the lock of %s (token %d)", req.job_id,
                              req.domain, fence.token)
                    return
            except DomsnapError as exc:
                log.warning("job %s: lease not renewed: %s", req.job_id, exc)

    t = threading.Thread(target=renew, name=f"lease-{req.job_id[:8]}", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()


def guarded(step: str) -> Callable[[Callable[..., dict[str, Any]]],
                                   Callable[..., dict[str, Any]]]:
    """Run a continuation step at most once per job, under the job's lock, renewing
    the domain lock's lease while it runs. The step's first argument is its plan."""
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(host: Host, req: jobs.AnyRequest, plan: dict[str, Any],
                *args: Any) -> dict[str, Any]:
            with job_lock(host, req.job_id):
                if not enter_step(host, req, step):
                    return host.store.get_job(req.job_id).result or {}
                with renewing(host, req, plan):
                    return fn(host, req, plan, *args)
        return run
    return wrap


def enter_step(host: Host, req: jobs.AnyRequest, step: str) -> bool:
    """Whether a continuation step should run now (messages come at least once).

    No: the job has ended already (a redelivered message), or a previous attempt of
    this same step died half-way (its pool process was killed, the message came
    back): that attempt is recovered like a dead worker's (a create undone, a revert
    or delete carried forward). Yes: the journal notes that the step started.
    """
    if host.store.get_job(req.job_id).state in ("succeeded", "failed"):
        return False
    entry = host.files.read_journal(req.job_id)
    if entry is None:
        jobs.fail(host, req, OperationFailed("the job's journal is missing on this host"))
        return False
    if entry.get("step") == step:
        log.warning("job %s: step %s was cut short before; recovering it", req.job_id, step)
        recover_entry(host, entry)
        return False
    host.files.write_journal(req.job_id, {**entry, "step": step})
    return True


def recover(host: Host) -> None:
    """Every journal left on this host (start-up: no step of this host runs yet), each on
    its own: one that cannot be recovered (any error at all: a bad path, a corrupt
    entry, a hypervisor error) is logged and left, and the others and the worker's start
    go on. First, every domain a dead worker left down in a stop-and-restore window
    runs again (the journals' recovery works on it as on any running domain)."""
    try:
        host.driver.recover_windows(blocking=True)
    except Exception as exc:  # noqa: BLE001 - must never block the worker's start
        log.error("could not restore domains left down: %s: %s", type(exc).__name__, exc)
    for entry in host.files.journals():
        body = entry.get("request") if isinstance(entry, dict) else None
        job_id = str(body.get("job_id", "?")) if isinstance(body, dict) else "?"
        try:
            t0 = time.monotonic()
            with job_lock(host, job_id):  # the guard may be at the same job
                fresh = host.files.read_journal(job_id)
                if fresh is not None:
                    recover_entry(host, fresh)
            log.info("job %s: start-up recovery took %.1f s", job_id, time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - must never block the worker's start
            log.error("could not recover job %s: %s: %s", job_id, type(exc).__name__, exc)
            give_up(host, entry, job_id, exc)


def give_up(host: Host, entry: dict[str, Any], job_id: str, exc: BaseException) -> None:
    """Recovery of one journal failed. Its journal moves to ``journal/failed/`` for the
    operator (so it is not tried at every start; ``domsnap fsck`` reports what the job
    may have left), and the job is failed with the reason, releasing what it held (its
    lock, name and pause marker): one bad journal must not wedge its domain for the
    lock's lifetime. A journal whose job id is not canonical is left where it is."""
    body = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(body, dict) or not JOB_ID_RE.fullmatch(job_id):
        return
    kept = host.files.journal_dir / "failed" / f"{job_id}.json"
    try:
        kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(host.files.journal_path(job_id), kept)
    except OSError as err:
        log.error("job %s: could not set its journal aside: %s", job_id, err)
        return
    domain, name = body.get("domain"), body.get("name")
    try:
        if isinstance(domain, str):
            host.files.clear_pausing(domain, job_id)
            if body.get("op") == "create" and isinstance(name, str):
                host.store.release_name(domain, name, job_id)
            host.store.release_lock(domain, job_id)
        host.store.update_job(job_id, state="failed", finished_at=time.time(),
                              error=ErrorInfo(code="operation_failed", message=(
                                  f"the worker stopped during the operation and recovering it "
                                  f"failed ({type(exc).__name__}: {exc}); its journal is kept "
                                  f"at {kept} for the operator")))
    except (DomsnapError, OSError, ValueError) as err:
        log.error("job %s: could not fail it after its recovery failed: %s", job_id, err)


STEPS = ("capture", "finish", "revert", "delete")  # the guarded continuation steps


def sweep(host: Host) -> None:
    """While the worker runs: recover each journal whose continuation step started but
    no longer runs (its job lock is free), e.g. a step that gave up because Redis was
    down and could not even record its failure. Journals at ``admitting`` or
    ``admitted`` are left alone: their message may still be in a queue."""
    for entry in host.files.journals():
        step = entry.get("step")
        job_id = str(entry.get("request", {}).get("job_id", "?"))
        if step not in STEPS:
            continue
        with job_lock(host, job_id, blocking=False) as got:
            if not got:
                continue  # its step runs
            fresh = host.files.read_journal(job_id)
            if fresh is not None and fresh.get("step") == step:
                log.warning("job %s: step %s ended without ending its job; recovering",
                            job_id, step)
                recover_entry(host, fresh)


def request_of(entry: dict[str, Any]) -> jobs.AnyRequest:
    body = entry["request"]
    assert isinstance(body, dict)
    models: dict[str, type[CreateRequest] | type[RevertRequest] | type[DeleteRequest]] = {
        "create": CreateRequest, "revert": RevertRequest, "delete": DeleteRequest}
    return models[str(body.get("op"))].model_validate(body)


def recover_entry(host: Host, entry: dict[str, Any], *, why: str = DEAD_WORKER) -> None:
    """Finish or undo the operation of one journal entry; the job ends either way. All of
    the entry is read before anything is touched: a corrupt one takes no lock."""
    req = request_of(entry)
    plan = entry.get("plan")
    if isinstance(plan, dict):
        for key in ("config", "old_config"):
            if isinstance(plan.get(key), dict):
                DomainConfig.model_validate(plan[key])
        for d in plan.get("disks") or []:
            DiskOp(**d)
    if not isinstance(plan, dict):  # it never got past admission: nothing was touched
        jobs.fail(host, req, OperationFailed(f"{why} while the request waited for admission; "
                                             "nothing was changed"))
        return
    taken = take_over(host, req, entry, plan)
    if taken is None and not isinstance(req, CreateRequest):
        jobs.fail(host, req, OperationFailed(f"{why}; another job holds the domain's lock "
                                             "now, so this one was not carried forward"))
        return
    plan = taken or plan
    with renewing(host, req, plan):
        _recover_planned(host, req, plan, entry, why)


def take_over(host: Host, req: jobs.AnyRequest, entry: dict[str, Any],
              plan: dict[str, Any]) -> dict[str, Any] | None:
    """Take the job's domain lock again, with a new fencing token (an attempt of this
    job that is somehow still alive can no longer commit); the journal keeps the new
    token. None if another job holds the lock now (this job's lease ran out)."""
    try:
        token = host.store.acquire_lock(req.domain, req.job_id, host.settings.lock_ttl_s)
    except DomainLocked as exc:
        log.error("job %s: cannot take the lock of %s back: %s", req.job_id, req.domain, exc)
        return None
    plan = {**plan, "fence": token}
    host.files.write_journal(req.job_id, {**entry, "plan": plan})
    return plan


def _recover_planned(host: Host, req: jobs.AnyRequest, plan: dict[str, Any],
                     entry: dict[str, Any], why: str) -> None:
    from workers.engine.delete import carry_out_delete
    from workers.engine.revert import carry_out_revert

    if isinstance(req, RevertRequest):
        carry_out_revert(host, req, plan, done=entry.get("phase"), why=why)
        return
    if isinstance(req, DeleteRequest):
        carry_out_delete(host, req, plan, done=int(entry.get("done", 0)), why=why)
        return
    assert isinstance(req, CreateRequest)
    if plan.get("mode") == "live":
        settle(host, req.domain, plan.get("domain_state", "running"))
    try:
        rec = host.store.get_snapshot(req.domain, req.name)
        if rec.job_id == req.job_id:  # it did commit; only the report was left
            jobs.succeed(host, req, {"name": rec.name, "pause_ms": rec.pause_ms,
                                     "memory_strategy": rec.memory_strategy,
                                     "memory_fallback": rec.memory_fallback,
                                     "recovered": True})
            return
    except UnknownSnapshot:
        pass
    remove_parts(host, req, plan)
    jobs.fail(host, req, OperationFailed(f"{why}; what it had done was rolled back"))


def settle(host: Host, uuid: str, state: str) -> str:
    """The domain back in ``state`` before any block work (a migration left at the
    switchover cancelled, inactivated block nodes active again); best effort."""
    try:
        return host.driver.resume_after_crash(uuid, state=state)
    except DomsnapError as exc:
        log.error("could not bring %s back to %s: %s", uuid, state, exc)
        return "unknown"


def remove_parts(host: Host, req: CreateRequest, plan: dict[str, Any]) -> None:
    """Remove every part a create may have made: through the hypervisor while the
    domain runs, with offline tools when it is gone (e.g. its QEMU was killed after
    the disk transaction). An overlay is merged back before it goes: the guest may
    have written to it. Then the domain config is the one before the create."""
    uuid = req.domain
    active = host.driver.is_active(uuid)
    for op in (DiskOp(**d) for d in plan.get("disks", [])):
        try:
            if op.strategy == "lvm":
                undo_offline(host.img, host.lvm, op, req.name)
            elif op.type == "internal" and req.name in host.img.snapshot_list(
                    op.path, force_share=True):
                if active:
                    host.driver.delete_internal_live(uuid, name=req.name, path=op.path)
                else:
                    host.img.snapshot_delete(op.path, req.name)
            elif op.type == "external" and op.target and Path(op.target).exists():
                if active:
                    host.driver.undo_disks(uuid, name=req.name, disks=[op])
                else:
                    if host.img.backing_file(op.target, force_share=True) == op.path:
                        try:
                            host.img.commit(op.target)  # keep what the guest wrote since
                        except DomsnapError as exc:
                            log.warning("overlay %s not merged back: %s", op.target, exc)
                    Path(op.target).unlink(missing_ok=True)
        except DomsnapError as exc:
            log.error("rollback of %s on %s: %s", op.vdev, uuid, exc)
    config = plan.get("config")
    if isinstance(config, dict):
        try:
            host.driver.set_domain_config(uuid, DomainConfig.model_validate(config))
        except DomsnapError as exc:
            log.error("could not restore the config of %s: %s", uuid, exc)
    mem = plan.get("memory_file")
    if mem:
        Path(str(mem)).unlink(missing_ok=True)
    host.files.remove_sidecar(uuid, req.name)

