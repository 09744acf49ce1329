"""Admission of a new request on its host: validate, check, lock, journal, plan.

Runs on the host's new-work queue. Everything that can refuse a request
refuses here, before anything is touched; what it returns is the plan that the
continuation (on the in-flight queue) carries out.
"""

from __future__ import annotations

from typing import Any

from domsnap.errors import DomsnapError, Refused
from domsnap.validation import parse_model
from schemas.models import CreateRequest, DeleteRequest, DomainInfo, RevertRequest
from workers.engine import jobs
from workers.engine.create import plan_create
from workers.engine.delete import plan_delete
from workers.engine.revert import plan_revert
from workers.host import Host


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
        jobs.wait_for_gate(host, req, emit)
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
        jobs.start(host, req, pausing=pausing, plan=plan)
        emit("admitted", f"{req.op} {req.name!r} on {info.name} admitted")
        return plan
    except DomsnapError as exc:
        jobs.fail(host, req, exc)
        return None
    except BaseException as exc:
        jobs.fail(host, req, exc)
        raise
