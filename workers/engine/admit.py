"""Admission of a new request on its host: validate, lock, check, plan, journal.

Runs on the host's new-work queue. Everything that can refuse a request
refuses here, before anything is touched; what it returns is the plan that the
continuation (on the in-flight queue) carries out. Each continuation step is
admitted too (:func:`admit_step`): it runs only for a job admitted here, with the
journaled plan. A body that fails validation changes no job but its own
(:func:`fail_unparsed`).
"""

from __future__ import annotations

import time
from typing import Any

from domsnap.errors import DomsnapError, InvalidInput, Refused, UnknownJob
from domsnap.validation import parse_model
from schemas.models import (
    JOB_ID_RE,
    CreateRequest,
    DeleteRequest,
    DomainInfo,
    ErrorInfo,
    RevertRequest,
)
from workers.engine import jobs
from workers.engine.create import plan_create
from workers.engine.delete import plan_delete
from workers.engine.revert import plan_revert
from workers.host import Host
from workers.hostio.paths import confined
from workers.routing import inflight_queue


def parse(body: Any, model: type[jobs.AnyRequest]) -> jobs.AnyRequest:
    """A request from its JSON body; the error names the field and the reason."""
    return parse_model(model, body)


# what to tell the user about a domain in a state no operation may touch
_NOT_OPERABLE = {
    "dying": "it is being destroyed; try again once it is gone",
    "suspended": ("it was suspended for a save that never finished (its vCPUs are frozen); "
                  "resume or destroy it first"),
    "shutdown": ("it has shut down but is not destroyed yet, so its device model may still "
                 "hold the images; destroy it (domain-destroy) or wait for the toolstack"),
    "unknown": ("its state cannot be read or it crashed and was preserved; its images may "
                "still be open, so nothing is touched: destroy it first"),
}


def require_operable(info: DomainInfo) -> None:
    """Only a running, paused or shut-off domain is snapshotted, reverted or cleaned up:
    in any other state its images may be open in a way no snapshot path is safe for
    (``qemu-img`` on an image a device model holds loses the snapshot silently)."""
    why = _NOT_OPERABLE.get(info.state)
    if why is not None:
        raise Refused(f"domain {info.name} is {info.state}: {why}", domain=info.uuid,
                      state=info.state)


def admit(host: Host, req: jobs.AnyRequest) -> dict[str, Any] | None:
    """The plan for ``req``, or None when there is nothing (more) to do: the job ended
    already (a redelivered message) or was refused (the job record says why)."""
    job = jobs.ensure_job(host, req)
    if job.state == "running":
        # Redelivered after admission: if the continuation may never have been sent
        # (the process died in between), send it again; a duplicate waits on the job's
        # lock and then finds the step done (workers.engine.recovery.guarded).
        entry = host.files.read_journal(req.job_id)
        return entry["plan"] if entry and entry.get("step") == "admitted" else None
    if job.state != "queued":
        return None  # redelivery of a message whose job has ended
    emit = jobs.progress_for(host, req.job_id)
    try:
        if req.host != host.name:
            raise Refused(f"request for host {req.host} reached host {host.name}")
        jobs.note_admitting(host, req)
        jobs.wait_for_gate(host, req, emit)
        fence = jobs.take_lock(host, req)
        info = host.driver.domain_info(req.domain)
        require_operable(info)
        if isinstance(req, CreateRequest):
            host.store.reserve_name(req.domain, req.name, req.job_id)
            plan = plan_create(host, req, info)
            pausing = plan["mode"] == "live"
        elif isinstance(req, RevertRequest):
            plan = plan_revert(host, req, info)
            pausing = info.state in ("running", "paused") or plan["final"] != "shutoff"
        else:
            assert isinstance(req, DeleteRequest)
            plan = plan_delete(host, req, info)
            pausing = False
        jobs.start(host, req, pausing=pausing, plan=plan, fence=fence)
        emit("admitted", f"{req.op} {req.name!r} on {info.name} admitted")
        return plan
    except DomsnapError as exc:
        jobs.fail(host, req, exc)
        return None
    except BaseException as exc:
        jobs.fail(host, req, exc)
        raise


# ---------------------------------------------------------------- rejected bodies


def fail_unparsed(host: Host, body: Any, exc: DomsnapError, *, op: str,
                  message_id: str | None) -> bool:
    """Whether the job of a body that failed validation was failed (else only logged).

    A body that does not validate cannot be trusted to own the job id it carries, so
    it may fail a job only when everything agrees that it is that job's own message:
    the message's id is the job id (the client sends each request under its job id),
    the job was never admitted (still ``queued``), it belongs to this host, and the
    body names the same operation, host, domain and snapshot as the job record. Then
    the submitter learns why instead of waiting for ever; otherwise (a finished job, a
    job of another host or domain, a made-up body) nothing is changed."""
    job_id = body.get("job_id") if isinstance(body, dict) else None
    if not isinstance(job_id, str) or job_id != message_id or not JOB_ID_RE.fullmatch(job_id):
        return False
    try:
        job = host.store.get_job(job_id)
    except DomsnapError:
        return False
    assert isinstance(body, dict)
    if job.state != "queued" or job.host != host.name or job.op != op:
        return False
    if (body.get("host"), body.get("domain"), body.get("name")) != (job.host, job.domain,
                                                                     job.name):
        return False
    host.store.update_job(job_id, state="failed", finished_at=time.time(),
                          error=ErrorInfo(code=exc.code, message=exc.message,
                                          details=exc.details))
    if op == "create":
        host.store.release_name(job.domain, job.name, job_id)  # compare-and-delete on the id
    return True


# ---------------------------------------------------------------- continuations


class StepRefused(Exception):
    """A continuation step that must not run (why, for the log); nothing was changed."""


def admit_step(host: Host, body: Any, model: type[jobs.AnyRequest], plan: Any, *,
               queue: object, disk: Any = None) -> jobs.AnyRequest:
    """The request of a continuation step (``domsnap.step.*``) that may run now.

    Internal steps act on what admission planned and checked; so a step runs only
    when it came from this host's in-flight queue, its job is admitted and running on
    this host, and the request and plan it carries are the ones journaled here at
    admission (a disk step's disk is one of the plan's). Paths in a create plan are
    checked against the snapshot roots once more. Raises StepRefused otherwise."""
    if queue != inflight_queue(host.name):
        raise StepRefused(f"came from {str(queue)[:80]!r}, not from the in-flight queue "
                          f"{inflight_queue(host.name)}")
    try:
        req = parse(body, model)
    except DomsnapError as exc:
        raise StepRefused(f"its request does not validate: {exc}") from None
    try:
        job = host.store.get_job(req.job_id)
    except UnknownJob:
        raise StepRefused(f"no job {req.job_id}") from None
    if job.host != host.name or (job.op, job.domain, job.name) != (req.op, req.domain,
                                                                   req.name):
        raise StepRefused(f"job {req.job_id} is another operation (its record differs)")
    if job.state != "running":
        raise StepRefused(f"job {req.job_id} is {job.state}, not running")
    entry = host.files.read_journal(req.job_id)
    if entry is None:
        raise StepRefused(f"job {req.job_id} has no journal on this host")
    if entry.get("request") != req.model_dump(mode="json") or entry.get("plan") != plan:
        raise StepRefused(f"job {req.job_id}: the request or plan differs from the one "
                          "journaled at admission")
    if disk is not None and disk not in plan.get("disks", []):
        raise StepRefused(f"job {req.job_id}: that disk is not in the journaled plan")
    if isinstance(req, CreateRequest):
        roots = host.settings.allowed_roots
        paths = [("memory_file", plan.get("memory_file"))] + [
            (f"disks[{i}].target", d.get("target")) for i, d in enumerate(plan.get("disks", []))
            if isinstance(d, dict) and d.get("strategy") != "lvm"]
        for field, path in paths:
            if path is not None:
                try:
                    confined(str(path), roots, field=field, must_not_exist=False)
                except InvalidInput as exc:
                    raise StepRefused(f"job {req.job_id}: {exc}") from None
    return req
