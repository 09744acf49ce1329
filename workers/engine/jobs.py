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

from domsnap.errors import DomsnapError, OperationFailed
from schemas.models import CreateRequest, DeleteRequest, ErrorInfo, JobRecord, RevertRequest
from workers.host import Host

AnyRequest = CreateRequest | RevertRequest | DeleteRequest
Progress = Callable[[str, str], None]


def progress_for(host: Host, job_id: str) -> Progress:
    def emit(step: str, message: str) -> None:
        try:
            host.store.add_event(job_id, step, message)
        except DomsnapError:
            pass  # progress is best effort; the job record is not

    return emit


def ensure_job(host: Host, req: AnyRequest) -> JobRecord:
    """The job record; created here when a control plane enqueued the message directly."""
    job = JobRecord.queued(req, time.time())
    if host.store.create_job(job):
        return job
    return host.store.get_job(req.job_id)


def wait_for_gate(host: Host, req: AnyRequest, emit: Progress) -> None:
    """New work waits while another operation that pauses a domain is in flight here.

    Once a domain is paused its operation is urgent: it must not compete with new
    work for this host. Bounded by the pause budget, so a stale marker cannot wedge
    the host (the crash-safety path clears stale markers).
    """
    deadline = time.monotonic() + host.settings.pause_budget_ms / 1000
    announced = False
    while True:
        others = {d: j for d, j in host.files.pausing_jobs().items() if j != req.job_id}
        if not others or time.monotonic() > deadline:
            return
        if not announced:
            emit("queued", f"waiting for {len(others)} pausing operation(s) on this host")
            announced = True
        time.sleep(0.01)


def start(host: Host, req: AnyRequest, *, pausing: bool, plan: dict[str, Any]) -> None:
    """Take the lock, write the journal, mark the job running."""
    host.store.acquire_lock(req.domain, req.job_id, host.settings.lock_ttl_s)
    host.files.write_journal(req.job_id, {"request": req.model_dump(mode="json"),
                                          "plan": plan, "step": "admitted"})
    if pausing:
        host.files.mark_pausing(req.domain, req.job_id)
    host.store.update_job(req.job_id, state="running", started_at=time.time())


def succeed(host: Host, req: AnyRequest, result: dict[str, Any]) -> None:
    _end(host, req, state="succeeded", result=result,
         message=f"{req.op} of {req.name!r} succeeded")


def fail(host: Host, req: AnyRequest, exc: BaseException) -> None:
    err = exc if isinstance(exc, DomsnapError) else OperationFailed(
        f"{type(exc).__name__}: {exc}")
    info = ErrorInfo(code=err.code, message=err.message, details=_jsonable(err.details))
    _end(host, req, state="failed", error=info, message=err.message)


def _end(host: Host, req: AnyRequest, *, state: str, message: str,
         result: dict[str, Any] | None = None, error: ErrorInfo | None = None) -> None:
    """Release what admission took, then publish the end: whoever sees the job ended
    may submit the next operation on the domain at once. The journal goes last, so a
    worker that dies in between leaves a trace for start-up recovery."""
    try:
        host.files.clear_pausing(req.domain, req.job_id)
        if isinstance(req, CreateRequest):
            host.store.release_name(req.domain, req.name, req.job_id)
        host.store.release_lock(req.domain, req.job_id)
    finally:
        progress_for(host, req.job_id)("done" if state == "succeeded" else "failed", message)
        job = host.store.update_job(req.job_id, state=state, finished_at=time.time(),
                                    result=result, error=error)
    _count(host, job)
    host.files.remove_journal(req.job_id)


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
