"""Start-up repair on a host: Redis and sidecars agree, and nothing an earlier
worker left half-done stays so.

- :func:`reconcile`: every sidecar record is in Redis and every Redis record of a
  domain of this host has its sidecar (invariant 6).
- :func:`recover`: each journal left by a dead worker is an operation that never
  ended: resume a domain it paused, remove the parts a create made, fail its job,
  release its lock (invariants 1 and 2).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, OperationFailed, UnknownSnapshot
from schemas.models import CreateRequest, DeleteRequest, RevertRequest
from workers.drivers.base import DiskOp
from workers.engine import jobs
from workers.engine.diskops import undo_offline
from workers.host import Host

log = logging.getLogger("domsnap.recovery")


def reconcile(host: Host) -> None:
    side = host.files.sidecars()
    for rec in side:
        try:
            host.store.get_snapshot(rec.domain, rec.name)
        except UnknownSnapshot:
            log.info("restoring record %s/%s from its sidecar", rec.domain, rec.name)
            current = host.store.current(rec.domain)
            host.store.put_snapshots(rec.domain, [rec],
                                     current=False if current else rec.name)
    have = {(r.domain, r.name) for r in side}
    for dom in host.driver.list_domains():
        for rec in host.store.list_snapshots(dom.uuid):
            if rec.host == host.name and (rec.domain, rec.name) not in have:
                log.info("writing missing sidecar of %s/%s", rec.domain, rec.name)
                host.files.write_sidecar(rec)


@contextmanager
def job_lock(host: Host, job_id: str) -> Iterator[None]:
    """Hold the job's host-local lock: a second delivery of a step waits here while the
    first one runs, and gets it at once if the first one's process died (the kernel
    drops a dead process's flock). So "cut short" and "still running" never mix up."""
    host.files.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(host.files.lock_dir / f"{job_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def guarded(step: str) -> Callable[[Callable[..., dict[str, Any]]],
                                   Callable[..., dict[str, Any]]]:
    """Run a continuation step at most once per job, under the job's lock."""
    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(host: Host, req: jobs.AnyRequest, *args: Any) -> dict[str, Any]:
            with job_lock(host, req.job_id):
                if not enter_step(host, req, step):
                    return host.store.get_job(req.job_id).result or {}
                return fn(host, req, *args)
        return run
    return wrap


def enter_step(host: Host, req: jobs.AnyRequest, step: str) -> bool:
    """Whether a continuation step should run now (messages come at least once).

    No: the job has ended already (a redelivered message), or a previous attempt of
    this same step died half-way (its pool process was killed, the message came
    back): that attempt is undone like a dead worker's, and the job fails.
    Yes: the journal notes that the step started, then it runs.
    """
    if host.store.get_job(req.job_id).state in ("succeeded", "failed"):
        return False
    entry = host.files.read_journal(req.job_id)
    if entry is None:
        jobs.fail(host, req, OperationFailed("the job's journal is missing on this host"))
        return False
    if entry.get("step") == step:
        log.warning("job %s: step %s was cut short before; undoing it", req.job_id, step)
        _recover_one(host, entry)
        return False
    host.files.write_journal(req.job_id, {**entry, "step": step})
    return True


def recover(host: Host) -> None:
    """Each journal on its own: one that cannot be recovered (any error at all: a bad
    path, a corrupt entry, a hypervisor error) is logged and left, and the others and
    the worker's start go on."""
    for entry in host.files.journals():
        try:
            _recover_one(host, entry)
        except Exception as exc:  # noqa: BLE001 - must never block the worker's start
            body = entry.get("request") if isinstance(entry, dict) else None
            job_id = body.get("job_id") if isinstance(body, dict) else None
            log.error("could not recover job %s: %s: %s", job_id, type(exc).__name__, exc)


def _recover_one(host: Host, entry: dict[str, object]) -> None:
    body = entry["request"]
    assert isinstance(body, dict)
    op = body.get("op")
    models: dict[str, type[CreateRequest] | type[RevertRequest] | type[DeleteRequest]] = {
        "create": CreateRequest, "revert": RevertRequest, "delete": DeleteRequest}
    req = models[str(op)].model_validate(body)
    plan = entry.get("plan")
    assert isinstance(plan, dict)
    uuid = req.domain
    if host.files.pausing_jobs().get(uuid) == req.job_id:
        # It was running when admitted and this job may have paused it: resume it
        # (the driver cancels a memory save left at the switchover first).
        try:
            if plan.get("domain_state", plan.get("was")) == "running" and \
                    host.driver.is_active(uuid):
                host.driver.unpause(uuid)
        except DomsnapError as exc:
            log.error("could not resume %s: %s", uuid, exc)
    if isinstance(req, CreateRequest):
        try:
            rec = host.store.get_snapshot(uuid, req.name)
            if rec.job_id == req.job_id:  # it did commit; only the report was left
                jobs.succeed(host, req, {"name": rec.name, "pause_ms": rec.pause_ms,
                                         "recovered": True})
                return
        except UnknownSnapshot:
            pass
        disks = [DiskOp(**d) for d in plan.get("disks", [])]
        for op in disks:
            try:
                if op.strategy == "lvm":
                    undo_offline(host.img, host.lvm, op, req.name)
                elif op.type == "internal" and req.name in host.img.snapshot_list(
                        op.path, force_share=True):
                    if host.driver.is_active(uuid):
                        host.driver.delete_internal_live(uuid, name=req.name, path=op.path)
                    else:
                        host.img.snapshot_delete(op.path, req.name)
                elif op.type == "external" and op.target and Path(op.target).exists():
                    cfg = host.driver.domain_config(uuid)
                    if any(d.target == op.target for d in cfg.disks) or host.driver.is_active(
                            uuid):
                        host.driver.undo_disks(uuid, name=req.name, disks=[op])
                    else:
                        Path(op.target).unlink(missing_ok=True)
            except DomsnapError as exc:
                log.error("rollback of %s on %s: %s", op.vdev, uuid, exc)
        mem = plan.get("memory_file")
        if mem:
            Path(str(mem)).unlink(missing_ok=True)
        host.files.remove_sidecar(uuid, req.name)
    jobs.fail(host, req, OperationFailed("the worker stopped during the operation; "
                                         "what it had done was rolled back"))
