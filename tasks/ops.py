"""The Celery tasks. Thin: parse the JSON body, call :mod:`workers`, hand on.

Public entry tasks (``domsnap.create``, ``domsnap.revert``, ``domsnap.delete``)
take one JSON object valid against ``schemas/json/request.schema.json`` and run
on the host's new-work queue; the continuations they launch (``domsnap.step.*``)
run on the host's in-flight queue (see :mod:`tasks.canvas`) and nowhere else: each
is admitted again before it acts (:func:`workers.engine.admit.admit_step`).
Messages reach these tasks only through :mod:`workers.intake`.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from domsnap.errors import DomsnapError
from schemas.models import CreateRequest, DeleteRequest, RevertRequest
from tasks.canvas import continuation
from workers.app import app
from workers.engine import create, delete, revert
from workers.engine.admit import StepRefused, admit, admit_step, fail_unparsed, parse
from workers.host import current_host
from workers.routing import (
    TASK_CREATE,
    TASK_DELETE,
    TASK_DISK,
    TASK_FINISH,
    TASK_LIVE,
    TASK_REVERT,
    TASK_RUN_DELETE,
    TASK_RUN_REVERT,
)

log = get_task_logger(__name__)


def _entry(task: Task, body: dict[str, Any], model: type[Any]) -> dict[str, Any]:
    host = current_host()
    try:
        req = parse(body, model)
    except DomsnapError as exc:
        job_id = body.get("job_id") if isinstance(body, dict) else None
        failed = fail_unparsed(host, body, exc, op=model.model_fields["op"].default,
                               message_id=task.request.id)
        log.error("rejected request %.80r: %s%s", job_id, exc,
                  " (its queued job failed)" if failed else " (no job changed)")
        return {"admitted": False, "error": exc.to_dict()}
    plan = admit(host, req)
    if plan is None:
        return {"job_id": req.job_id, "admitted": False}
    continuation(req, plan).apply_async()
    return {"job_id": req.job_id, "admitted": True}


def _step(task: Task, body: dict[str, Any], model: type[Any], plan: dict[str, Any],
          disk: dict[str, Any] | None = None) -> Any:
    """The request of a continuation step allowed to run now, or None (logged)."""
    queue = (task.request.delivery_info or {}).get("routing_key")
    try:
        return admit_step(current_host(), body, model, plan, queue=queue, disk=disk)
    except StepRefused as exc:
        log.error("refused step %s (message %s): %s", task.name, task.request.id, exc)
        return None


def _refused() -> dict[str, Any]:
    return {"refused": True}


@app.task(name=TASK_CREATE, bind=True)
def create_entry(self: Task, body: dict[str, Any]) -> dict[str, Any]:
    return _entry(self, body, CreateRequest)


@app.task(name=TASK_REVERT, bind=True)
def revert_entry(self: Task, body: dict[str, Any]) -> dict[str, Any]:
    return _entry(self, body, RevertRequest)


@app.task(name=TASK_DELETE, bind=True)
def delete_entry(self: Task, body: dict[str, Any]) -> dict[str, Any]:
    return _entry(self, body, DeleteRequest)


@app.task(name=TASK_LIVE, bind=True)
def capture(self: Task, body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    req = _step(self, body, CreateRequest, plan)
    return create.run_live(current_host(), req, plan) if req else _refused()


@app.task(name=TASK_DISK, bind=True)
def disk(self: Task, body: dict[str, Any], disk: dict[str, Any]) -> dict[str, Any]:
    # the disk's plan is the journaled one (admit_step checks the disk is in it)
    host = current_host()
    entry = host.files.read_journal(str(body.get("job_id"))) if isinstance(body, dict) and \
        isinstance(body.get("job_id"), str) else None
    plan = entry.get("plan") if entry else None
    req = _step(self, body, CreateRequest, plan if isinstance(plan, dict) else {}, disk)
    if req is None:
        return {"vdev": str(disk.get("vdev"))[:32], "ok": False,
                "error": "step refused (see the worker log)"}
    return create.run_offline_disk(host, req, disk)


@app.task(name=TASK_FINISH, bind=True)
def finish_offline(self: Task, results: list[dict[str, Any]], body: dict[str, Any],
                   plan: dict[str, Any]) -> dict[str, Any]:
    req = _step(self, body, CreateRequest, plan)
    return create.finish_offline(current_host(), req, plan, results) if req else _refused()


@app.task(name=TASK_RUN_REVERT, bind=True)
def run_revert(self: Task, body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    req = _step(self, body, RevertRequest, plan)
    return revert.run_revert(current_host(), req, plan) if req else _refused()


@app.task(name=TASK_RUN_DELETE, bind=True)
def run_delete(self: Task, body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    req = _step(self, body, DeleteRequest, plan)
    return delete.run_delete(current_host(), req, plan) if req else _refused()


# ---------------------------------------------------------------- fsck (issue 7)

from workers.routing import TASK_FSCK  # noqa: E402 - kept with its task


@app.task(name=TASK_FSCK)
def fsck(body: dict[str, Any]) -> dict[str, Any]:
    """Check (and with ``repair`` fix) this host's records and files: an FsckReport, or
    ``{"error": ...}`` for a body that does not validate."""
    from domsnap.validation import parse_model
    from schemas.models import FsckRequest
    from workers.engine.fsck_run import run_fsck

    try:
        req = parse_model(FsckRequest, body)
        if req.host != current_host().name:
            from domsnap.errors import Refused

            raise Refused(f"fsck for host {req.host} reached host {current_host().name}")
        return run_fsck(current_host(), req).model_dump(mode="json")
    except DomsnapError as exc:
        return {"error": exc.to_dict()}
