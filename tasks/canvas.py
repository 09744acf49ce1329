"""The canvas of each operation after admission, all on the host's in-flight queue.

- create, live (running/paused domain): one task — memory and every disk in one
  driver call (the pause is inside it), then resume and commit.
- create, offline (shut-off domain): a chord — one task per disk in parallel,
  then one that commits, or rolls back every disk that was done.
- revert, delete: one task each.
"""

from __future__ import annotations

from typing import Any

from celery import chord, signature
from celery.canvas import Signature

from workers.routing import (
    TASK_DISK,
    TASK_FINISH,
    TASK_LIVE,
    TASK_RUN_DELETE,
    TASK_RUN_REVERT,
    inflight_queue,
)


def continuation(req: Any, plan: dict[str, Any]) -> Signature:
    queue = inflight_queue(req.host)
    body = req.model_dump(mode="json")
    if req.op == "create" and plan["mode"] == "offline":
        header = [signature(TASK_DISK, args=(body, d), queue=queue, immutable=True)
                  for d in plan["disks"]]
        return chord(header, signature(TASK_FINISH, args=(body, plan), queue=queue))
    name = {"create": TASK_LIVE, "revert": TASK_RUN_REVERT, "delete": TASK_RUN_DELETE}[req.op]
    return signature(name, args=(body, plan), queue=queue, immutable=True)
