"""Putting a request on its host's queue without Celery, on a Redis broker.

A submitting command (``domsnap snapshot-create``, a control plane's first request)
used to import Celery and kombu and set up a producer (exchange and queue
declarations) to send one message: about half a second of CPU and several round
trips, most of the CLI's submit time (docs/benchmarks.md, issue 11). On a
``redis://`` broker that message is one LPUSH of a JSON envelope onto the queue's
list, and this module writes exactly the envelope kombu's Redis transport writes for
Celery's ``send_task`` (task protocol 2, JSON body, base64 body encoding, priority 0).
``tests/unit/test_enqueue.py`` compares the two, key by key, for each entry task, so
a Celery upgrade that changes the wire shows there; the integration suite runs every
request through this path into real workers.

Not sent this way: a broker that is not plain ``redis://`` (RabbitMQ, TLS, sockets),
and everything but the three entry tasks (fsck and prune wait on Celery results, so
they keep Celery). Celery's ``task-sent`` event is not emitted for a direct send; the
worker's own task events (received, started, succeeded) are.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid as uuidlib
from typing import Any
from urllib.parse import urlsplit


def direct_ok(broker_url: str) -> bool:
    """Whether a message for this broker may be written directly (plain redis://)."""
    return urlsplit(broker_url).scheme == "redis"


def envelope(task: str, task_id: str, args: list[Any], queue: str) -> dict[str, Any]:
    """The Redis transport's envelope of a Celery protocol 2 message for ``task``
    with positional ``args`` (JSON values), routed to ``queue``."""
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None,
                                  "chord": None}])
    return {
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": _short_repr(args), "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{socket.gethostname()}", "ignore_result": None,
            "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": str(uuidlib.uuid4()), "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuidlib.uuid4()),
        },
    }


def _short_repr(value: Any, limit: int = 1024) -> str:
    """Celery's ``argsrepr``: the repr of the arguments, cut (it is for display only)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def push(client: Any, queue: str, message: dict[str, Any]) -> None:
    """LPUSH the envelope onto the queue's list, where the workers' BRPOP takes it
    (kombu's Redis transport: the list of priority 0 is named as the queue)."""
    client.lpush(queue, json.dumps(message))
