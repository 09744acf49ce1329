"""Idempotent requests on the raw message path: a message whose ``request_id`` an
earlier request already carried is not run; its job record points at that request's
job (``duplicate_of``), which is what :meth:`domsnap.store.Store.get_job` with
``follow`` (the client, ``domsnap job``) then shows."""

from __future__ import annotations

import time
from typing import Any

from domsnap.errors import Conflict, UnknownJob
from domsnap.store import Store
from schemas.models import CreateRequest, DeleteRequest, ErrorInfo, JobRecord, RevertRequest

AnyRequest = CreateRequest | RevertRequest | DeleteRequest


def duplicate_submission(store: Store, req: AnyRequest, job: JobRecord) -> JobRecord | None:
    """None if ``req`` is the first with its request id (or carries none); else the
    ended job record of this submission (an alias of the first, or a conflict)."""
    if req.request_id is None:
        return None
    first_id = store.claim_request(req.request_id, req.job_id)
    if first_id is None:
        return None
    now = time.time()
    try:
        first = store.get_job(first_id)
        same = (first.op, first.domain, first.name) == (req.op, req.domain, req.name)
    except UnknownJob:
        same = True  # its submitter has claimed the id and not yet written the job
    changes: dict[str, Any]
    if same:
        changes = {"state": "succeeded", "finished_at": now, "duplicate_of": first_id,
                   "result": {"duplicate_of": first_id, "admitted": False}}
    else:
        err = Conflict(f"request_id {req.request_id!r} was already used by job {first_id} "
                       "for another request", field="request_id", job_id=first_id)
        changes = {"state": "failed", "finished_at": now,
                   "error": ErrorInfo(code=err.code, message=err.message, details=err.details)}
    alias = JobRecord.model_validate({**job.model_dump(), **changes})
    if store.create_job(alias):
        return alias
    current = store.get_job(req.job_id)
    if current.state != "queued":
        return current  # a redelivery of this very duplicate
    return store.update_job(req.job_id, **changes)
