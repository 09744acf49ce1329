"""Queue and task names: built here and nowhere else.

Each host has two queues: ``domsnap.host.<host>`` for new requests, and
``domsnap.host.<host>.inflight`` for the continuations of operations already
admitted (disk steps, resume, commit, rollback). ``domsnap worker`` consumes
them with separate pools, so an operation in flight never waits behind new work.
"""

from __future__ import annotations

import re

from domsnap.errors import InvalidInput

HOST_RE = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")

# Public task names: a control plane in any language enqueues these with one JSON body.
TASK_CREATE = "domsnap.create"
TASK_REVERT = "domsnap.revert"
TASK_DELETE = "domsnap.delete"
ENTRY_TASKS = {"create": TASK_CREATE, "revert": TASK_REVERT, "delete": TASK_DELETE}
TASK_FSCK = "domsnap.fsck"  # on the host's new-work queue; returns an FsckReport

# Internal continuation tasks: only ever run from the in-flight queue (workers.intake
# turns them away anywhere else), and re-check the job and its journal before acting.
INTERNAL_PREFIX = "domsnap.step."
TASK_LIVE = "domsnap.step.capture"
TASK_DISK = "domsnap.step.disk"
TASK_FINISH = "domsnap.step.finish_offline"
TASK_RUN_REVERT = "domsnap.step.revert"
TASK_RUN_DELETE = "domsnap.step.delete"


# Scheduled backups: the scheduler (Celery beat) sends each policy run to the schedule
# queue (DOMSNAP_SCHEDULE_QUEUE, default below), consumed by the scheduler's own small
# worker (``domsnap scheduler``), never by a host.
SCHEDULE_QUEUE = "domsnap.schedule"
TASK_POLICY_RUN = "domsnap.policy.run"


def is_internal(task_name: str) -> bool:
    """Whether ``task_name`` is a continuation step (never a request from outside)."""
    return task_name.startswith(INTERNAL_PREFIX)


def check_host(host: str) -> str:
    if not HOST_RE.fullmatch(host):
        raise InvalidInput(f"invalid host name {host!r}", field="host")
    return host


def host_queue(host: str) -> str:
    return f"domsnap.host.{check_host(host)}"


def inflight_queue(host: str) -> str:
    return f"domsnap.host.{check_host(host)}.inflight"
