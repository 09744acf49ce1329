"""Admission of a new request on its host: validate, check, lock, journal, plan.

Runs on the host's new-work queue. Everything that can refuse a request
refuses here, before anything is touched; what it returns is the plan that the
continuation (on the in-flight queue) carries out.
"""

from __future__ import annotations

from typing import Any

from domsnap.errors import DomsnapError, Refused
from domsnap.validation import parse_model
from schemas.models import CreateRequest, DeleteRequest, RevertRequest
from workers.engine import jobs
from workers.engine.create import plan_create
from workers.engine.delete import plan_delete
from workers.engine.revert import plan_revert
from workers.host import Host


def parse(body: Any, model: type[jobs.AnyRequest]) -> jobs.AnyRequest:
    """A request from its JSON body; the error names the field and the reason."""
    return parse_model(model, body)


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
        info = host.driver.domain_info(req.domain)
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
