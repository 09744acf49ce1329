"""Start-up repair on a host: Redis and the sidecar records rebuild each other
(invariant 6), and a create that a dead worker left half-done is undone: the
domain runs again, no part of the snapshot stays, the job fails, the lock is free
(invariants 1 and 2)."""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from schemas.models import CreateRequest, JobRecord
from tests.integration.cluster import Cluster
from tests.integration.test_create import internal_snapshots
from tests.integration.test_failures import qmp_status
from workers.block.qmp import QMPClient
from workers.engine import jobs
from workers.engine.create import plan_create
from workers.host import build_host

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
    # and s2's record is as a domsnap from before the summary index wrote it
    client.store.r.delete(client.store.keys.summaries(dom.uuid),
                          client.store.keys.by_time(dom.uuid))
    side2 = dom.host.snapshots / dom.uuid / "s2.json"
    side2.unlink()  # the host lost s2's sidecar
    cluster.start_worker(name)
    assert {r.name: r for r in client.snapshots(dom.name)} == before
    assert client.store.index_matches(dom.uuid)  # the start-up reconcile rebuilt it
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
    fence = jobs.take_lock(host, req)
    host.store.reserve_name(dom.uuid, "crashed", job_id)
    plan = plan_create(host, req, host.driver.domain_info(dom.uuid))
    jobs.start(host, req, pausing=True, plan=plan, fence=fence)
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


def _admitted(cluster: Cluster, host_name: str, dom_name: str, snap: str
              ) -> tuple[Any, CreateRequest, dict[str, Any]]:
    """A create admitted exactly as the new-work pool admits one (lock, journal, marker)."""
    h = cluster.hosts[host_name]
    settings = cluster.settings(state_dir=h.state_dir, host=host_name,
                                snapshot_roots=[h.images])
    host = build_host(settings)
    uuid = host.driver.find(dom_name)
    req = CreateRequest(job_id=str(uuidlib.uuid4()), domain=uuid, domain_name=dom_name,
                        host=host_name, name=snap, submitted_at=time.time())
    host.store.create_job(JobRecord(job_id=req.job_id, op="create", domain=uuid,
                                    host=host_name, name=snap, submitted_at=req.submitted_at))
    fence = jobs.take_lock(host, req)
    host.store.reserve_name(uuid, snap, req.job_id)
    plan = plan_create(host, req, host.driver.domain_info(uuid))
    jobs.start(host, req, pausing=True, plan=plan, fence=fence)
    return host, req, plan


def _send_capture(cluster: Cluster, req: CreateRequest, plan: dict[str, Any]) -> None:
    from workers.app import make_app
    from workers.routing import TASK_LIVE, inflight_queue

    make_app(cluster.settings()).send_task(
        TASK_LIVE, args=[req.model_dump(mode="json"), plan], queue=inflight_queue(req.host))


def _wait_ended(host: Any, job_id: str) -> JobRecord:
    deadline = time.monotonic() + 120
    while (job := host.store.get_job(job_id)).state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"job {job_id} never ended: {job.state}"
        time.sleep(0.1)
    return job


def test_a_capture_cut_short_is_undone_when_its_message_comes_back(cluster: Cluster) -> None:
    """The pool process died during the capture; the broker delivers the message again
    (acks_late): the step must not run twice over the first attempt's leftovers, it
    undoes them (domain running again, no parts) and fails the job."""
    name = f"h8-{cluster.suffix}"
    cluster.start_worker(name)
    dom = cluster.create_domain(name, "cutshort", guest=False, disks=2)
    cluster.wait_inventory(dom)
    host, req, plan = _admitted(cluster, name, dom.name, "cut")
    entry = host.files.read_journal(req.job_id)
    assert entry is not None
    host.files.write_journal(req.job_id, {**entry, "step": "capture"})  # attempt 1 began
    with QMPClient(dom.qmp, timeout=10) as q:  # ... and got this far
        q.execute("stop")
        q.execute("blockdev-snapshot-internal-sync", {"device": "vda-qcow2", "name": "cut"})
    mem = Path(plan["memory_file"])
    host.files.domain_dir(dom.uuid)
    mem.write_bytes(b"QEVM partial")

    _send_capture(cluster, req, plan)  # the redelivery

    job = _wait_ended(host, req.job_id)
    assert job.state == "failed" and job.error is not None
    assert qmp_status(dom) == "running"
    assert internal_snapshots(dom.active("vda")) == []
    assert not mem.exists()
    assert host.store.lock_owner(dom.uuid) is None
    assert host.store.list_snapshots(dom.uuid) == []


def test_a_duplicate_capture_after_success_changes_nothing(cluster: Cluster) -> None:
    name = f"h8-{cluster.suffix}"
    if name not in cluster.hosts or cluster.hosts[name].proc is None:
        cluster.start_worker(name)
    dom = cluster.create_domain(name, "dupe", guest=False, disks=2)
    cluster.wait_inventory(dom)
    host, req, plan = _admitted(cluster, name, dom.name, "once")
    _send_capture(cluster, req, plan)
    assert _wait_ended(host, req.job_id).state == "succeeded"
    rec = host.store.get_snapshot(dom.uuid, "once")
    _send_capture(cluster, req, plan)  # delivered again
    time.sleep(2)
    assert host.store.get_job(req.job_id).state == "succeeded"
    assert host.store.get_snapshot(dom.uuid, "once") == rec
    assert internal_snapshots(dom.active("vda")) == ["once"]
    assert Path(plan["memory_file"]).exists()
    assert qmp_status(dom) == "running"
