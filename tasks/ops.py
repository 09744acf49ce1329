"""The Celery tasks. Thin: parse the JSON body, call :mod:`workers`, hand on.

Public entry tasks (``domsnap.create``, ``domsnap.revert``, ``domsnap.delete``)
take one JSON object valid against ``schemas/json/request.schema.json`` and run
on the host's new-work queue; the continuations they launch run on the host's
in-flight queue (see :mod:`tasks.canvas`).
"""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from domsnap.errors import DomsnapError
from schemas.models import CreateRequest, DeleteRequest, RevertRequest
from tasks.canvas import continuation
from workers.app import app
from workers.engine import create, delete, revert
from workers.engine.admit import admit, parse
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


def _entry(body: dict[str, Any], model: type[Any]) -> dict[str, Any]:
    host = current_host()
    try:
        req = parse(body, model)
    except DomsnapError as exc:
        _fail_unparsed(host, body, exc)
        return {"admitted": False, "error": exc.to_dict()}
    plan = admit(host, req)
    if plan is None:
        return {"job_id": req.job_id, "admitted": False}
    continuation(req, plan).apply_async()
    return {"job_id": req.job_id, "admitted": True}


def _fail_unparsed(host: Any, body: Any, exc: DomsnapError) -> None:
    """A body that does not validate: fail its job if it names one, else only log."""
    job_id = body.get("job_id") if isinstance(body, dict) else None
    log.error("rejected request %s: %s", job_id, exc)
    if isinstance(job_id, str):
        try:
            from schemas.models import ErrorInfo

            host.store.update_job(job_id, state="failed",
                                  error=ErrorInfo(code=exc.code, message=exc.message,
                                                  details=exc.details))
        except DomsnapError:
            pass


@app.task(name=TASK_CREATE)
def create_entry(body: dict[str, Any]) -> dict[str, Any]:
    return _entry(body, CreateRequest)


@app.task(name=TASK_REVERT)
def revert_entry(body: dict[str, Any]) -> dict[str, Any]:
    return _entry(body, RevertRequest)


@app.task(name=TASK_DELETE)
def delete_entry(body: dict[str, Any]) -> dict[str, Any]:
    return _entry(body, DeleteRequest)


@app.task(name=TASK_LIVE)
def capture(body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return create.run_live(current_host(), CreateRequest.model_validate(body), plan)


@app.task(name=TASK_DISK)
def disk(body: dict[str, Any], disk: dict[str, Any]) -> dict[str, Any]:
    return create.run_offline_disk(current_host(), CreateRequest.model_validate(body), disk)


@app.task(name=TASK_FINISH)
def finish_offline(results: list[dict[str, Any]], body: dict[str, Any],
                   plan: dict[str, Any]) -> dict[str, Any]:
    return create.finish_offline(current_host(), CreateRequest.model_validate(body), plan,
                                 results)


@app.task(name=TASK_RUN_REVERT)
def run_revert(body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return revert.run_revert(current_host(), RevertRequest.model_validate(body), plan)


@app.task(name=TASK_RUN_DELETE)
def run_delete(body: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    return delete.run_delete(current_host(), DeleteRequest.model_validate(body), plan)


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
