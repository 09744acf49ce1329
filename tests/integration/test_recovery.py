"""Start-up repair on a host: Redis and the sidecar records rebuild each other
(invariant 6), and a create that a dead worker left half-done is undone: the
domain runs again, no part of the snapshot stays, the job fails, the lock is free
(invariants 1 and 2)."""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path

import pytest

from schemas.models import CreateRequest, JobRecord
from tests.integration.cluster import Cluster
from tests.integration.test_create import internal_snapshots
from tests.integration.test_failures import qmp_status
from workers import jobs
from workers.create import plan_create
from workers.host import build_host
from workers.qmp import QMPClient

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def test_redis_and_sidecars_rebuild_each_other(cluster: Cluster) -> None:
    name = f"h6-{cluster.suffix}"
    cluster.start_worker(name)
    dom = cluster.create_domain(name, "rebuild", guest=False, disks=1)
    cluster.wait_inventory(dom)
    client = cluster.client()
    for snap in ("s1", "s2"):
        assert client.wait(client.create(dom.name, name=snap, disk_only=True),
                           timeout=120).state == "succeeded"
    before = {r.name: r for r in client.snapshots(dom.name)}
    cluster.stop_worker(name)
    client.store.r.hdel(client.store.keys.snapshots(dom.uuid), "s1")  # Redis lost s1
    side2 = dom.host.snapshots / dom.uuid / "s2.json"
    side2.unlink()  # the host lost s2's sidecar
    cluster.start_worker(name)
    assert {r.name: r for r in client.snapshots(dom.name)} == before
    assert side2.exists()
    assert before["s2"].model_dump_json(indent=2) == side2.read_text()


def test_half_done_create_is_undone_at_start(cluster: Cluster) -> None:
    name = f"h7-{cluster.suffix}"
    dom = cluster.create_domain(name, "halfdone", guest=False, disks=2)
    settings = cluster.settings(state_dir=dom.host.state_dir, host=name,
                                snapshot_roots=[dom.host.images])
    host = build_host(settings)
    job_id = str(uuidlib.uuid4())
    req = CreateRequest(job_id=job_id, domain=dom.uuid, domain_name=dom.name, host=name,
                        name="crashed", submitted_at=time.time())
    # What admission does, then what a worker killed during the capture leaves behind:
    host.store.create_job(JobRecord(job_id=job_id, op="create", domain=dom.uuid, host=name,
                                    name="crashed", submitted_at=req.submitted_at))
    host.store.reserve_name(dom.uuid, "crashed", job_id)
    plan = plan_create(host, req, host.driver.domain_info(dom.uuid))
    jobs.start(host, req, pausing=True, plan=plan)
    with QMPClient(dom.qmp, timeout=10) as q:
        q.execute("stop")
        q.execute("blockdev-snapshot-internal-sync", {"device": "vda-qcow2", "name": "crashed"})
    mem = Path(plan["memory_file"])
    host.files.domain_dir(dom.uuid)
    mem.write_bytes(b"QEVM partial")
    assert qmp_status(dom) == "paused"

    cluster.start_worker(name)  # start-up recovery runs before the pools start

    job = host.store.get_job(job_id)
    assert job.state == "failed" and job.error is not None
    assert "worker stopped" in job.error.message
    assert qmp_status(dom) == "running"
    assert internal_snapshots(dom.active("vda")) == []
    assert not mem.exists()
    assert host.store.lock_owner(dom.uuid) is None
    assert host.files.read_journal(job_id) is None
    assert host.files.pausing_jobs() == {}
    assert host.store.list_snapshots(dom.uuid) == []
    # the name is free again
    client = cluster.client()
    assert client.wait(client.create(dom.name, name="crashed"), timeout=120).state == \
        "succeeded"
