"""The life of a job on a host: admission (the gate, the lock, the journal) and
its end (success or failure), shared by create, revert and delete.

Every end path releases what admission took: the lock, the name reservation,
the pause marker and the journal. Those releases are compare-and-delete on
the job id, so running them twice (redelivery) is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

from domsnap.errors import (
    Cancelled,
    DomsnapError,
    OperationFailed,
    OperationTimeout,
    StoreUnavailable,
    UnknownJob,
)
from domsnap.store import Fence
from schemas.models import CreateRequest, DeleteRequest, ErrorInfo, JobRecord, RevertRequest
from workers.engine import audit
from workers.engine.requests import duplicate_submission
from workers.host import Host
from workers.hostio import faults
from workers.hostio.currentfile import write_current

AnyRequest = CreateRequest | RevertRequest | DeleteRequest
Progress = Callable[[str, str], None]


def progress_for(host: Host, job_id: str, *, data: dict[str, Any] | None = None) -> Progress:
    """The job's progress callback; ``data`` goes with each event it adds."""
    def emit(step: str, message: str) -> None:
        try:
            host.store.add_event(job_id, step, message, data)
        except DomsnapError:
            pass  # progress is best effort; the job record is not

    return emit


def ensure_job(host: Host, req: AnyRequest) -> JobRecord:
    """The job record; created here when a control plane enqueued the message directly.

    Read first: the client writes the job before it enqueues, so one GET is the common
    case (a SET NX that fails, then the GET, was two round trips; bench/fleet.py)."""
    job = JobRecord.queued(req, time.time())
    dup = duplicate_submission(host.store, req, job)
    if dup is not None:
        return dup  # it repeats an earlier request's request_id: that job is the answer
    try:
        return host.store.get_job(req.job_id)
    except UnknownJob:
        pass  # enqueued without the client: create it (NX: a racing writer wins)
    if host.store.create_job(job):
        return job
    return host.store.get_job(req.job_id)


def wait_for_gate(host: Host, req: AnyRequest, emit: Progress) -> None:
    """New work waits while another operation that pauses a domain is in flight here.

    Once a domain is paused its operation is urgent: it must not compete with new
    work for this host. Bounded by the pause budget, so a stale marker cannot wedge
    the host (the crash-safety path clears stale markers).
    """
    faults.point("admit-gate")
    deadline = time.monotonic() + host.settings.pause_budget_ms / 1000
    announced = False
    while True:
        others = {d: j for d, j in host.files.pausing_jobs().items() if j != req.job_id}
        if not others or time.monotonic() > deadline:
            check_cancel(host, req, "while it waited to be admitted")
            return
        if not announced:
            emit("queued", f"waiting for {len(others)} pausing operation(s) on this host")
            announced = True
        time.sleep(0.01)


def check_cancel(host: Host, req: AnyRequest, where: str) -> None:
    """A safe point: raise Cancelled if someone asked to cancel the job (job-cancel).
    Redis unreachable here means no cancel can be seen: the job goes on."""
    try:
        wanted = host.store.cancel_requested(req.job_id)
    except StoreUnavailable:
        return
    if wanted:
        raise Cancelled(f"{req.op} of {req.name!r} cancelled {where}", job_id=req.job_id)


def fence_of(req: AnyRequest, plan: dict[str, Any] | None) -> Fence | None:
    """The fencing token this attempt of the job holds (set at admission, renewed when
    recovery takes the job over), for the commits that must present it."""
    token = plan.get("fence") if isinstance(plan, dict) else None
    return Fence(req.job_id, int(token)) if isinstance(token, int) else None


def take_lock(host: Host, req: AnyRequest) -> int:
    """Take the domain's lock (a lease, with a fencing token) before anything is read
    for the plan: a plan made from records another job is about to change would be
    carried out on a state that no longer exists (a revert to a snapshot deleted in the
    meantime). The token joins the ``admitting`` journal entry at once, so a failure
    from here on releases exactly this holding. (A cancel was last looked for as the
    request left the gate, just before.)"""
    token = host.store.acquire_lock(req.domain, req.job_id, host.settings.lock_ttl_s)
    host.files.write_journal(req.job_id, {"request": req.model_dump(mode="json"),
                                          "step": "admitting", "fence": token})
    return token


def start(host: Host, req: AnyRequest, *, pausing: bool, plan: dict[str, Any],
          fence: int) -> None:
    """Journal the plan (with the lock's fencing token), mark the job running."""
    check_cancel(host, req, "before it was admitted")
    plan["fence"] = fence
    host.files.write_journal(req.job_id, {"request": req.model_dump(mode="json"),
                                          "plan": plan, "step": "admitted"})
    if pausing:
        host.files.mark_pausing(req.domain, req.job_id, budget_s=budget_for(host, plan))
    host.store.update_job(req.job_id, state="running", started_at=time.time())


def budget_for(host: Host, plan: dict[str, Any]) -> float:
    """The pause budget of an operation on the domain its plan describes."""
    config = plan.get("config") or {}
    memory = config.get("memory", 128) if isinstance(config, dict) else 128
    return host.settings.pause_budget_for(int(memory))


def note_admitting(host: Host, req: AnyRequest) -> None:
    """A journal entry before the gate: if this worker dies while the request waits
    (or plans), start-up recovery fails the job and frees its name at once instead of
    leaving it queued until the broker gives the message back hours later."""
    host.files.write_journal(req.job_id, {"request": req.model_dump(mode="json"),
                                          "step": "admitting"})


def succeed(host: Host, req: AnyRequest, result: dict[str, Any]) -> None:
    _end(host, req, state="succeeded", result=result,
         message=f"{req.op} of {req.name!r} succeeded")


def succeed_carried(host: Host, req: AnyRequest, result: dict[str, Any],
                    why: str | None) -> None:
    """:func:`succeed`; for an operation recovery carried forward (``why`` says what
    stopped it), the result and the progress say so."""
    if why is not None:
        result["recovered"] = True
        progress_for(host, req.job_id)(
            "recovered", f"{why}; the {req.op} was carried forward and completed")
    succeed(host, req, result)


def fail_carried(host: Host, req: AnyRequest, exc: BaseException, why: str | None) -> None:
    """:func:`fail`; for an operation recovery carried forward, the error says so."""
    if why is not None:
        exc = OperationFailed(f"{why}; carrying the {req.op} forward failed: {exc}")
    fail(host, req, exc)


def fail(host: Host, req: AnyRequest, exc: BaseException) -> None:
    if isinstance(exc, SoftTimeLimitExceeded):
        exc = OperationTimeout(f"{req.op} of {req.name!r} ran past the task time limit "
                               f"(DOMSNAP_TASK_TIME_LIMIT_S={host.settings.task_time_limit_s}); "
                               "what it had done was rolled back", job_id=req.job_id)
    err = exc if isinstance(exc, DomsnapError) else OperationFailed(
        f"{type(exc).__name__}: {exc}")
    info = ErrorInfo(code=err.code, message=err.message, details=_jsonable(err.details))
    _end(host, req, state="failed", error=info, message=err.message)


def _end(host: Host, req: AnyRequest, *, state: str, message: str,
         result: dict[str, Any] | None = None, error: ErrorInfo | None = None) -> None:
    """Release what admission took, then publish the end: whoever sees the job ended
    may submit the next operation on the domain at once. The journal goes last, so a
    worker that dies in between leaves a trace for start-up recovery."""
    entry = host.files.read_journal(req.job_id)
    fence = fence_of(req, entry.get("plan") if entry else None)
    if fence is None and entry is not None and isinstance(entry.get("fence"), int):
        fence = Fence(req.job_id, int(entry["fence"]))  # locked, not yet planned
    job: JobRecord | None = None
    try:
        host.files.clear_pausing(req.domain, req.job_id)
        if isinstance(req, CreateRequest):
            host.store.release_name(req.domain, req.name, req.job_id)
        host.store.release_lock(req.domain, req.job_id, fence=fence)
    finally:
        progress_for(host, req.job_id)("done" if state == "succeeded" else "failed", message)
        try:
            job = host.store.update_job(req.job_id, fence=fence, state=state,
                                        finished_at=time.time(), result=result, error=error)
        except UnknownJob:
            pass  # Redis lost the job (restarted empty): nothing left to report it to
        if state == "succeeded":
            _note_current(host, req)
        audit.record(host.settings, host.store, who=req.requested_by or "unknown", op=req.op,
                     outcome=state, domain=req.domain, name=req.name, job_id=req.job_id,
                     error=error.code if error else None)
    if job is not None:
        _count(host, job)
    host.files.remove_journal(req.job_id)


def _note_current(host: Host, req: AnyRequest) -> None:
    """Keep the host's copy of the ``current`` pointer (fsck rebuilds Redis's from it)."""
    try:
        name = req.name if req.op != "delete" else host.store.current(req.domain)
        write_current(host.settings.state_dir, req.domain, name)
    except (DomsnapError, OSError):
        pass  # fsck reports and repairs a host copy that lags


def _count(host: Host, job: JobRecord) -> None:
    """The job's outcome into the metrics (best effort, like progress)."""
    from domsnap.metrics import record_job

    started = job.started_at or job.submitted_at
    try:
        record_job(host.store, job.op, job.state,
                   (job.finished_at - started) if job.finished_at and started else None,
                   (job.result or {}).get("pause_ms"))
    except DomsnapError:
        pass


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        out[k] = v if isinstance(v, str | int | float | bool | list | dict | type(None)) else str(v)
    return out
