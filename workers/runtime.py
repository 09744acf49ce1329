"""``domsnap worker``: everything that runs on a host.

One supervisor process per host that:
- reconciles the host's sidecar records with Redis at start (either rebuilds the other),
- finishes or undoes operations a previous worker left (journals, pause markers),
- publishes the host's inventory, and its liveness apart from it (workers/heartbeat.py),
- runs two Celery workers with separate pools: one on the host's new-work queue,
  one on its in-flight queue, so continuations never wait behind new requests.
A pool that exits is started again (with backoff); Redis or broker outages are
ridden out, never a reason to exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from domsnap.errors import DomsnapError
from domsnap.settings import Settings
from schemas.models import HostInventory
from workers.engine.recovery import reconcile, recover, sweep
from workers.heartbeat import Heartbeat
from workers.host import Host, build_host
from workers.routing import host_queue, inflight_queue

log = logging.getLogger("domsnap.worker")


def publish(host: Host, *, alive: bool = True) -> None:
    inv = HostInventory(host=host.name, driver=host.driver.name, published_at=time.time(),
                        domains=host.driver.list_domains())
    host.store.publish_inventory(inv, host.settings.host_ttl_s, alive=alive)


def heartbeat(host: Host) -> Heartbeat:
    """The host's heartbeat: the inventory and liveness on threads of their own, so a
    slow ``xl list`` does not make the host look dead (workers/heartbeat.py)."""
    return Heartbeat(lambda: publish(host, alive=False),
                     lambda: host.store.renew_alive(host.name, host.settings.host_ttl_s),
                     interval_s=host.settings.heartbeat_s,
                     inventory_s=host.settings.inventory_s,
                     stall_s=host.settings.inventory_stall_s)


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


POOL_BACKOFF_MAX_S = 30.0
SWEEP_S = 5.0


def _retrying(what: str, fn: Callable[[], None], stop: threading.Event) -> bool:
    """Run ``fn`` until it works (Redis may be down: back off up to 10 s); False if
    asked to stop first."""
    delay = 0.5
    while not stop.is_set():
        try:
            fn()
            return True
        except (DomsnapError, OSError) as exc:
            log.warning("%s: %s; trying again in %.1f s", what, exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
    return False


class Pool:
    """One Celery worker process; restarted with backoff whenever it exits (a broker
    outage must not stop the host)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env
        self.proc: subprocess.Popen[Any] | None = None
        self.started = 0.0
        self.backoff = 1.0
        self.restart_at = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)
        self.started = time.monotonic()

    def tend(self) -> None:
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            ran = now - self.started
            self.backoff = 1.0 if ran > 60 else min(self.backoff * 2, POOL_BACKOFF_MAX_S)
            log.error("pool %s exited with %s after %.0f s; restarting in %.0f s",
                      self.argv[self.argv.index("-n") + 1], rc, ran, self.backoff)
            self.proc = None
            self.restart_at = now + self.backoff
        if self.proc is None and now >= self.restart_at:
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run(settings: Settings, *, loglevel: str = "INFO") -> int:
    """The supervisor. It never exits on its own for a Redis or broker outage: start-up
    repair waits for Redis, the heartbeat logs and goes on, a pool that exits is started
    again, and steps that gave up while Redis was away are recovered once it is back
    (:func:`workers.engine.recovery.sweep`)."""
    logging.basicConfig(level=loglevel, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()

    def _term(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    host = build_host(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    host.files.worker_pid_path.write_text(str(os.getpid()))
    guard = start_guard(settings)

    def _repair() -> None:
        t0 = time.monotonic()
        host.store.ping()
        reconcile(host)
        log.info("start-up repair: sidecars and Redis reconciled in %.1f s",
                 time.monotonic() - t0)
        t1 = time.monotonic()
        recover(host)
        log.info("start-up repair: recovery done in %.1f s; starting the pools",
                 time.monotonic() - t1)

    if not _retrying("start-up repair", _repair, stop):
        return 0
    beat = heartbeat(host)
    beat.publish_once()
    beat.start(stop)
    env = {**os.environ, "DOMSNAP_HOST": host.name, "DOMSNAP_DRIVER": settings.driver,
           "DOMSNAP_STATE_DIR": str(settings.state_dir)}
    pools = [Pool(_celery_argv(host_queue(host.name), settings.concurrency,
                               f"new@{host.name}", loglevel), env),
             Pool(_celery_argv(inflight_queue(host.name), settings.inflight_concurrency,
                               f"inflight@{host.name}", loglevel), env)]
    for pool in pools:
        pool.start()
    log.info("domsnap worker for host %s (driver %s): queues %s and %s", host.name,
             settings.driver, host_queue(host.name), inflight_queue(host.name))
    next_sweep = time.monotonic() + SWEEP_S
    try:
        while not stop.is_set():
            for pool in pools:
                pool.tend()
            if guard.poll() is not None:  # it only exits by itself once no worker runs
                log.error("the pause guard exited with %s; starting it again", guard.returncode)
                guard = start_guard(settings)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_S
                try:
                    sweep(host)
                except Exception as exc:  # noqa: BLE001 - tried again next round
                    log.warning("sweep: %s: %s", type(exc).__name__, exc)
            stop.wait(0.5)
    finally:
        stop.set()
        for pool in pools:
            pool.stop()
        for pool in pools:
            pool.wait()
        try:
            host.store.withdraw_host(host.name)
        except DomsnapError:
            pass
        if guard.poll() is not None:
            guard.wait()
    return 0
