"""``domsnap worker``: everything that runs on a host.

One supervisor process per host that:
- reconciles the host's sidecar records with Redis at start (either rebuilds the other),
- finishes or undoes operations a previous worker left (journals, pause markers),
- publishes the host's inventory with a heartbeat,
- runs two Celery workers with separate pools: one on the host's new-work queue,
  one on its in-flight queue, so continuations never wait behind new requests.
If either pool dies, the supervisor stops the other and exits non-zero.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from domsnap.errors import DomsnapError
from domsnap.settings import Settings
from schemas.models import HostInventory
from workers.engine.recovery import reconcile, recover
from workers.host import Host, build_host
from workers.routing import host_queue, inflight_queue

log = logging.getLogger("domsnap.worker")


def publish(host: Host, *, alive: bool = True) -> None:
    inv = HostInventory(host=host.name, driver=host.driver.name, published_at=time.time(),
                        domains=host.driver.list_domains())
    host.store.publish_inventory(inv, host.settings.host_ttl_s, alive=alive)


def _heartbeat(host: Host, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            publish(host)
        except (DomsnapError, OSError) as exc:
            log.warning("heartbeat failed: %s", exc)
        stop.wait(host.settings.heartbeat_s)


def _celery_argv(queue: str, concurrency: int, nodename: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks.ops", "worker", "-Q", queue,
            "-c", str(concurrency), "-n", nodename, "--pool", "prefork",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", loglevel]


def start_guard(settings: Settings) -> subprocess.Popen[Any]:
    """The pause guard (workers/guard.py), in a session of its own: it outlives this
    supervisor and its pools if they are killed together, and exits by itself once no
    worker runs here and nothing is left to guard."""
    env = {**os.environ, "DOMSNAP_HOST": settings.host, "DOMSNAP_DRIVER": settings.driver,
           "DOMSNAP_STATE_DIR": str(settings.state_dir)}
    env.pop("DOMSNAP_FAULT", None)  # fault tests kill the worker, never the guard
    return subprocess.Popen([sys.executable, "-m", "workers.guard"], env=env,
                            start_new_session=True, stdin=subprocess.DEVNULL)


def run(settings: Settings, *, loglevel: str = "INFO") -> int:
    logging.basicConfig(level=loglevel, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host = build_host(settings)
    host.store.ping()
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    host.files.worker_pid_path.write_text(str(os.getpid()))
    guard = start_guard(settings)
    reconcile(host)
    recover(host)
    stop = threading.Event()
    publish(host)
    beat = threading.Thread(target=_heartbeat, args=(host, stop), daemon=True)
    beat.start()
    env = {**os.environ, "DOMSNAP_HOST": host.name, "DOMSNAP_DRIVER": settings.driver,
           "DOMSNAP_STATE_DIR": str(settings.state_dir)}
    procs: list[subprocess.Popen[Any]] = [
        subprocess.Popen(_celery_argv(host_queue(host.name), settings.concurrency,
                                      f"new@{host.name}", loglevel), env=env),
        subprocess.Popen(_celery_argv(inflight_queue(host.name), settings.inflight_concurrency,
                                      f"inflight@{host.name}", loglevel), env=env),
    ]
    log.info("domsnap worker for host %s (driver %s): queues %s and %s", host.name,
             settings.driver, host_queue(host.name), inflight_queue(host.name))

    def _term(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    rc = 0
    try:
        while not stop.is_set():
            for p in procs:
                if p.poll() is not None:
                    log.error("pool %s exited with %s; stopping", p.args, p.returncode)
                    rc = p.returncode or 1
                    stop.set()
            stop.wait(0.5)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            host.store.withdraw_host(host.name)
        except DomsnapError:
            pass
        if guard.poll() is not None:
            guard.wait()
    return rc
