"""``domsnap scheduler``: Celery beat with domsnap's redbeat scheduler, plus the small
worker that runs the policy firings (queue ``domsnap.schedule``), plus optionally the
metrics port. Either child exiting stops the other; the exit code is non-zero then.

Several scheduler instances may run (on different machines): redbeat's lock lets one
beat fire; the others wait for the lock. Every instance's worker takes runs from the
one queue, each message once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from domsnap.settings import Settings
from domsnap.store import Store

log = logging.getLogger("domsnap.scheduler")


def argv(settings: Settings, *, concurrency: int, loglevel: str, node: str) -> list[list[str]]:
    celery = [sys.executable, "-m", "celery", "-A", "tasks.schedule"]
    return [
        [*celery, "beat", "-S", "tasks.schedule:PolicyScheduler", "-l", loglevel,
         "--max-interval", f"{settings.beat_max_interval_s:g}"],
        [*celery, "worker", "-Q", settings.schedule_queue, "-P", "threads", "-c", str(concurrency),
         "-n", f"schedule-{node}@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-E", "-l", loglevel],
    ]


def run(settings: Settings, *, concurrency: int = 4, loglevel: str = "INFO",
        metrics_port: int = 0) -> int:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = Store.from_url(settings.redis_url, prefix=settings.key_prefix,
                           job_ttl_s=settings.job_ttl_s)
    store.ping()
    if metrics_port:
        from domsnap.metrics import serve

        serve(store, metrics_port)
        log.info("metrics on port %s", metrics_port)
    stop = threading.Event()
    node = f"{os.getpid()}"
    procs: list[subprocess.Popen[Any]] = [
        subprocess.Popen(a, env=dict(os.environ))
        for a in argv(settings, concurrency=concurrency, loglevel=loglevel, node=node)]
    log.info("domsnap scheduler: beat (redbeat) and the %s worker", settings.schedule_queue)

    def _term(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    rc = 0
    try:
        while not stop.is_set():
            for p in procs:
                if p.poll() is not None:
                    log.error("%s exited with %s; stopping", p.args, p.returncode)
                    rc = p.returncode or 1
                    stop.set()
            stop.wait(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return rc
