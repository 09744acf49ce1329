"""The ceiling of the fleet benchmark: bare Celery tasks of a domsnap create's canvas
shape, with empty bodies (``celery -A bench.ceiling worker``).

A live create is two tasks on two queues of its host: the entry task on the host's
new-work queue, which launches the continuation on the host's in-flight queue
(:mod:`tasks.canvas`). Here ``entry`` does the same with an empty body and ``step``
returns the time it ran (the "done" of the job). The Celery settings that shape the
traffic are domsnap's (workers/app.py: JSON, late acks, prefetch 1, results kept,
task events on); the transport and consumer are Celery's own (no envelope checks).
The broker is ``BENCH_CEILING_BROKER`` (the benchmark's private Redis).
"""

from __future__ import annotations

import os
import time

from celery import Celery

BROKER = os.environ.get("BENCH_CEILING_BROKER", "redis://127.0.0.1:6379/15")

app = Celery("ceiling", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    result_accept_content=["json"], task_acks_late=True, task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1, worker_hijack_root_logger=False,
    worker_send_task_events=True, task_send_sent_event=True, task_track_started=False,
)


@app.task(name="ceiling.entry")  # type: ignore[untyped-decorator]
def entry(job_id: str, host: str) -> str:
    """The entry hop: hand on to the host's second queue, as domsnap's admission does."""
    step.apply_async(args=(job_id,), queue=f"ceiling.inflight.{host}", task_id=f"{job_id}-step")
    return job_id


@app.task(name="ceiling.step")  # type: ignore[untyped-decorator]
def step(job_id: str) -> float:
    """The continuation hop: nothing but the time it ran."""
    return time.time()
