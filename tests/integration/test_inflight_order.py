"""A paused domain never waits behind new work, proved by order, not by timing.

100 requests wait on a host's queue behind one live create. The host's new-work
pool has a single slot. The live create's resume must come before any of the 100
waiting jobs is admitted: its continuation runs on the in-flight queue with its
own pool, and new work is not admitted while a pausing operation is in flight.
"""

from __future__ import annotations

import time

import pytest

from schemas.models import HostInventory
from tests.integration.cluster import Cluster
from workers.drivers.qemu import QemuDriver
from workers.hostio.runner import SubprocessRunner

pytestmark = [pytest.mark.integration, pytest.mark.vm]

WAITING = 100


def test_resume_runs_before_any_waiting_job_starts(cluster: Cluster) -> None:
    name = f"h3-{cluster.suffix}"
    h = cluster.host(name)
    busy = cluster.create_domain(name, "busy", guest=False, disks=2)
    cold = [cluster.create_domain(name, f"w{i:03d}", guest=False, start=False, disks=1)
            for i in range(WAITING)]
    # The worker is (re)starting: its last inventory says it is alive, requests queue up.
    client = cluster.client()
    driver = QemuDriver(h.state_dir, SubprocessRunner())
    client.store.publish_inventory(
        HostInventory(host=name, driver="qemu", published_at=time.time(),
                      domains=driver.list_domains()), ttl_s=60)
    first = client.create(busy.name, name="urgent")
    waiting = [client.create(d.name, name="later", disk_only=True) for d in cold]
    cluster.start_worker(name, concurrency=1, inflight=1)
    ended = [client.wait(j, timeout=600) for j in [first, *waiting]]
    assert [j.state for j in ended] == ["succeeded"] * (WAITING + 1), [
        j.error for j in ended if j.error]

    def seq(job_id: str, step: str) -> int:
        return next(e.seq for e in client.store.events(job_id) if e.step == step)

    resumed = seq(first, "resumed")
    assert seq(first, "admitted") < resumed
    admitted = [seq(j, "admitted") for j in waiting]
    assert resumed < min(admitted), (resumed, sorted(admitted)[:5])
    # the waiting jobs then ran in the order they were queued
    assert admitted == sorted(admitted)
