"""Fault tests: a real ``domsnap worker`` SIGKILLed (supervisor and both pools at
once) at an exact step of create, revert and delete, on real QEMU domains; then
either the worker is started again (start-up recovery) or nobody comes (the
host's pause guard). After each: the domain in a defined run state, QEMU healthy
(no migration or block job left, block nodes active), no half snapshot, no orphan
image, the job ended, the lock and the name free.

A fault point (``workers/hostio/faults.py``) is armed through the worker's
environment, ``DOMSNAP_FAULT=<point>``: the process that reaches it kills its
whole process group. ``<point>:qemu`` kills the domain's QEMU there instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from domsnap.client import Client
from domsnap.store import Store
from schemas.models import CreateRequest, JobRecord
from tests.integration.cluster import Cluster, Domain, HostHandle, unique_name
from tests.integration.diskdata import qmp, qmp_status, write_pattern
from tests.integration.test_create import internal_snapshots
from workers.hostio.hostfiles import HostFiles

pytestmark = [pytest.mark.integration, pytest.mark.vm]

FAR = "600"  # a pause budget the guard never reaches in the restart tests


# ---------------------------------------------------------------- helpers


def _fresh_log(h: HostHandle) -> None:
    """Each worker run gets its own log (start_worker counts 'ready.' lines in it)."""
    if h.log is not None and h.log.exists():
        h.log.rename(h.log.with_suffix(f".{time.monotonic_ns()}.log"))


def arm(cluster: Cluster, h: HostHandle, point: str, *, budget: str = FAR) -> None:
    """(Re)start the host's worker with ``point`` armed."""
    cluster.stop_worker(h.name)
    _fresh_log(h)
    h.env["DOMSNAP_FAULT"] = point
    h.env["DOMSNAP_PAUSE_BUDGET_S"] = budget
    cluster.start_worker(h.name)


def died(h: HostHandle, timeout: float = 180) -> None:
    """The worker killed itself at the armed point (SIGKILL, nothing cleaned up)."""
    assert h.proc is not None
    rc = h.proc.wait(timeout=timeout)
    assert rc == -9, f"worker {h.name} exited {rc}, not killed at the fault point"
    h.proc = None


def restart(cluster: Cluster, h: HostHandle) -> None:
    """A clean worker again: start-up recovery runs before its pools take work."""
    h.env.pop("DOMSNAP_FAULT", None)
    h.env["DOMSNAP_PAUSE_BUDGET_S"] = FAR
    _fresh_log(h)
    cluster.start_worker(h.name)


def ended(client: Client, job_id: str, timeout: float = 180) -> JobRecord:
    job = client.wait(job_id, timeout=timeout)
    assert job.state in ("succeeded", "failed")
    return job


def ok(client: Client, job_id: str) -> JobRecord:
    job = ended(client, job_id)
    assert job.state == "succeeded", f"{job.op} {job.name}: {job.error}"
    return job


def clean_qemu(dom: Domain) -> None:
    """No migration left running or at the switchover, no block job, QEMU alive."""
    assert dom.pid() is not None, f"{dom.name}: its QEMU is gone"
    assert qmp(dom, "query-jobs") == []
    assert qmp(dom, "query-migrate").get("status") in (None, "completed", "cancelled")


def no_leftovers(h: HostHandle, dom: Domain, client: Client) -> None:
    """No journal, no pause marker, the lock free; every image in the snapshot dir is
    named by a record or the domain's config. A job is published as ended before its
    worker drops the journal (the last thing it does: a death in between leaves a trace
    for recovery), so the journals are given a moment to go."""
    journals = h.state_dir / "journal"
    deadline = time.monotonic() + 15
    while list(journals.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(journals.glob("*.json")) == []
    assert not any((h.state_dir / "pausing").glob("*"))
    assert client.store.lock_owner(dom.uuid) is None
    named = {d["target"] for d in dom.config()["disks"]}
    for rec in client.store.list_snapshots(dom.uuid):
        named.update(p for d in rec.disks for p in (d.file, d.overlay) if p)
        if rec.memory_file:
            named.add(rec.memory_file)
    snapdir = h.snapshots / dom.uuid
    files = {str(p) for p in snapdir.glob("*") if p.suffix in (".qcow2", ".save")}
    assert files <= named, f"orphans: {sorted(files - named)}"


@pytest.fixture(scope="module")
def fh(cluster: Cluster) -> HostHandle:
    return cluster.start_worker(f"fa-{cluster.suffix}")


def _domain(cluster: Cluster, h: HostHandle, prefix: str, disks: int = 2) -> Domain:
    if h.proc is None:
        restart(cluster, h)
    dom = cluster.create_domain(h.name, unique_name(prefix), guest=False, disks=disks)
    cluster.wait_inventory(dom)
    return dom


# ---------------------------------------------------------------- create


def test_paused_create_killed_at_the_switchover_is_cancelled(cluster: Cluster,
                                                             fh: HostHandle) -> None:
    """(c) A paused domain's create killed with its migration at pre-switchover: every
    later create failed "There's a migration process in progress"."""
    dom = _domain(cluster, fh, "swo")
    client = cluster.client()
    dom.pause()
    arm(cluster, fh, "capture-pre-switchover")
    job = client.create(dom.name, name="cut")
    died(fh)
    assert qmp(dom, "query-migrate")["status"] == "pre-switchover"  # what the kill left
    restart(cluster, fh)
    assert ended(client, job).state == "failed"
    clean_qemu(dom)
    assert qmp_status(dom) == "paused"
    assert internal_snapshots(dom.active(dom.vdevs[0])) == []
    no_leftovers(fh, dom, client)
    ok(client, client.create(dom.name, name="cut"))  # the name is free, QEMU takes more
    assert qmp_status(dom) == "paused"
    assert internal_snapshots(dom.active(dom.vdevs[0])) == ["cut"]


def test_paused_create_killed_after_the_switchover_reactivates_first(
        cluster: Cluster, fh: HostHandle) -> None:
    """(c) Killed after migrate-continue: the block nodes are inactive; deleting the
    internal snapshots on them crashed QEMU (Assertion !(bs->open_flags &
    BDRV_O_INACTIVE)). Recovery reactivates them (cont + stop) first."""
    dom = _domain(cluster, fh, "post")
    client = cluster.client()
    dom.pause()
    arm(cluster, fh, "capture-after-switchover")
    job = client.create(dom.name, name="cut")
    died(fh)
    assert qmp_status(dom) == "postmigrate"
    restart(cluster, fh)
    assert ended(client, job).state == "failed"
    clean_qemu(dom)  # alive: no assertion failure
    assert qmp_status(dom) == "paused"
    for vdev in dom.vdevs:
        assert internal_snapshots(dom.active(vdev)) == []
    no_leftovers(fh, dom, client)
    ok(client, client.create(dom.name, name="again"))


def test_create_killed_at_the_gate_fails_at_restart(cluster: Cluster, fh: HostHandle) -> None:
    """(d) Killed while the request waited at the admission gate: the job stayed queued
    with its name reserved until the broker gave the message back (4 h)."""
    dom = _domain(cluster, fh, "gate")
    client = cluster.client()
    arm(cluster, fh, "admit-gate")
    job = client.create(dom.name, name="gated")
    died(fh)
    assert client.store.get_job(job).state == "queued"
    restart(cluster, fh)
    rec = client.store.get_job(job)  # recovery ran before the pools came up
    assert rec.state == "failed" and rec.error is not None
    assert "waited for admission" in rec.error.message
    assert client.store.r.hget(client.store.keys.reserved(dom.uuid), "gated") is None
    ok(client, client.create(dom.name, name="gated"))


def test_create_killed_between_sidecar_and_commit(cluster: Cluster, fh: HostHandle) -> None:
    """(e) The record came back from its sidecar but neither ``current`` nor the next
    snapshot's parent pointed at it."""
    dom = _domain(cluster, fh, "side")
    client = cluster.client()
    ok(client, client.create(dom.name, name="s1", disk_only=True))
    arm(cluster, fh, "commit-sidecar")
    job = client.create(dom.name, name="s2", disk_only=True)
    died(fh)
    restart(cluster, fh)
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    assert client.store.current(dom.uuid) == "s2"
    ok(client, client.create(dom.name, name="s3", disk_only=True))
    assert client.store.get_snapshot(dom.uuid, "s3").parent == "s2"
    no_leftovers(fh, dom, client)


def test_qemu_killed_after_the_transaction_leaves_no_parts(cluster: Cluster,
                                                           fh: HostHandle) -> None:
    """(f) QEMU died after the disk transaction: the job failed but the internal
    snapshots and overlays stayed on disk. They are removed offline."""
    dom = _domain(cluster, fh, "qdie")
    client = cluster.client()
    before = dom.config()
    arm(cluster, fh, "capture-after-transaction:qemu")
    job = client.create(dom.name, name="gone", type="internal")
    assert ended(client, job).state == "failed"
    assert dom.pid() is None
    for vdev in dom.vdevs:
        assert internal_snapshots(dom.active(vdev)) == []
    assert dom.config()["disks"] == before["disks"]
    no_leftovers(fh, dom, client)
    dom.start()  # the worker is still armed: the same with external overlays
    cluster.wait_inventory(dom)
    job2 = client.create(dom.name, name="gone2", type="external")
    assert ended(client, job2).state == "failed"
    assert dom.config()["disks"] == before["disks"]
    assert not list((fh.snapshots / dom.uuid).glob("gone2*"))
    no_leftovers(fh, dom, client)


# ---------------------------------------------------------------- delete


def _external(cluster: Cluster, fh: HostHandle, prefix: str) -> tuple[Domain, Client]:
    """A running domain with one external snapshot ``e1`` and data written after it
    (so it lives in the overlay that a delete of ``e1`` merges down)."""
    dom = _domain(cluster, fh, prefix, disks=1)
    client = cluster.client()
    ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    write_pattern(dom, dom.vdevs[0], 0, 0x5A)
    return dom, client


def _read(dom: Domain, offset: int = 0) -> str:
    from tests.integration.diskdata import hmp

    return hmp(dom, f'qemu-io -d {dom.vdevs[0]}/virtio-backend "read -P 0x5a {offset} 65536"')


def _after_delete(fh: HostHandle, dom: Domain, client: Client) -> None:
    vdev = dom.vdevs[0]
    assert dom.active(vdev) == str(dom.disks[vdev])  # the base, not the merged overlay
    block = qmp(dom, "query-block")
    assert block[0]["inserted"]["image"]["filename"] == str(dom.disks[vdev])
    assert "Pattern verification failed" not in _read(dom)  # the later write survived
    assert client.snapshots(dom.name) == []
    no_leftovers(fh, dom, client)
    ok(client, client.create(dom.name, name="next", type="external", disk_only=True))
    ok(client, client.delete(dom.name, "next"))  # no "Need a root block node"


def test_delete_killed_during_the_live_merge(cluster: Cluster, fh: HostHandle) -> None:
    """(a) Killed with QEMU's commit job ``ready``: it stayed so, and every later block
    operation failed. Recovery completes the merge, dismisses the job, fixes config
    and records."""
    dom, client = _external(cluster, fh, "mrg")
    arm(cluster, fh, "commit-ready")
    job = client.delete(dom.name, "e1")
    died(fh)
    assert [j["status"] for j in qmp(dom, "query-jobs")] == ["ready"]
    restart(cluster, fh)
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    clean_qemu(dom)
    _after_delete(fh, dom, client)


def test_delete_killed_right_after_the_merge(cluster: Cluster, fh: HostHandle) -> None:
    """(a) Killed after job-complete: the config still named the merged-away overlay."""
    dom, client = _external(cluster, fh, "mrg2")
    arm(cluster, fh, "delete-after-commit")
    job = client.delete(dom.name, "e1")
    died(fh)
    restart(cluster, fh)
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    clean_qemu(dom)
    _after_delete(fh, dom, client)


# ---------------------------------------------------------------- revert


def test_revert_killed_during_the_memory_restore(cluster: Cluster, fh: HostHandle) -> None:
    """(b) Killed while QEMU restored memory: it stayed ``inmigrate`` (paused) while the
    runstate file said shut off, so recovery skipped it. Now the revert is carried
    forward: the domain runs from the snapshot."""
    dom = _domain(cluster, fh, "rst")
    client = cluster.client()
    ok(client, client.create(dom.name, name="m1"))
    arm(cluster, fh, "restore-incoming")
    job = client.revert(dom.name, "m1")
    died(fh)
    assert dom.pid() is not None  # QEMU was left there, not running ...
    assert dom.state() == "paused"  # ... and it is not reported shut off any more
    restart(cluster, fh)
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    assert qmp_status(dom) == "running"
    assert dom.state() == "running"
    assert client.store.current(dom.uuid) == "m1"
    clean_qemu(dom)
    no_leftovers(fh, dom, client)


@pytest.mark.parametrize("point", ["revert-after-stop", "revert-after-disks"])
def test_revert_killed_after_the_new_overlay(cluster: Cluster, fh: HostHandle,
                                             point: str) -> None:
    """(b) Killed after QEMU quit, or after the new overlay was made: the domain stayed
    shut off though running was asked, and the overlay was an orphan."""
    dom = _domain(cluster, fh, "ovl")
    client = cluster.client()
    ok(client, client.create(dom.name, name="x1", type="external", disk_only=True))
    arm(cluster, fh, point)
    job = client.revert(dom.name, "x1", start="running")
    died(fh)
    assert dom.pid() is None
    restart(cluster, fh)
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    assert dom.state() == "running"
    for vdev in dom.vdevs:
        assert ".r" in Path(dom.active(vdev)).name  # the revert's fresh overlay
    no_leftovers(fh, dom, client)


# ---------------------------------------------------------------- the guard


def test_guard_resumes_a_domain_when_nobody_restarts_the_worker(cluster: Cluster) -> None:
    """(1) The worker dies at the switchover of a running domain's create and is not
    started again: the guard (its own session) resumes the domain once the budget
    (3 s here) runs out, records it on the host and fails the job."""
    h = cluster.start_worker(f"fg-{cluster.suffix}")
    dom = _domain(cluster, h, "grd")
    client = cluster.client()
    arm(cluster, h, "capture-pre-switchover", budget="3")
    job = client.create(dom.name, name="lost")
    died(h)
    assert qmp_status(dom) == "finish-migrate"  # paused at the switchover, nobody home
    rec = ended(client, job, timeout=60)
    assert rec.state == "failed" and rec.error is not None
    assert "pause budget (3 s) ran out" in rec.error.message
    assert qmp_status(dom) == "running"
    clean_qemu(dom)
    assert internal_snapshots(dom.active(dom.vdevs[0])) == []
    # the guard notes "recovered" just after recovery published the job's end
    deadline = time.monotonic() + 15
    while True:
        events = [e for e in HostFiles(h.state_dir, h.snapshots).guard_events()
                  if e["job_id"] == job]
        if len(events) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e["event"] for e in events] == ["budget-expired", "recovered"]
    assert events[0]["state"] == "running"
    no_leftovers(h, dom, client)


def test_guard_carries_a_revert_forward_when_the_worker_died_restoring(
        cluster: Cluster) -> None:
    """(1) For a revert, resuming means a defined state: the worker died with QEMU
    restoring; the guard ends the half-loaded QEMU and carries the revert forward,
    so the domain runs from the snapshot, never paused in inmigrate."""
    h = cluster.host(f"fg-{cluster.suffix}")
    restart(cluster, h)  # a clean worker (the test before left the host armed)
    dom = _domain(cluster, h, "grv")
    client = cluster.client()
    ok(client, client.create(dom.name, name="m1"))
    arm(cluster, h, "restore-incoming", budget="3")
    job = client.revert(dom.name, "m1")
    died(h)
    rec = ended(client, job, timeout=90)
    assert rec.state == "succeeded", rec.error
    assert qmp_status(dom) == "running"
    assert client.store.current(dom.uuid) == "m1"
    no_leftovers(h, dom, client)


# ---------------------------------------------------------------- offline disks


def test_offline_disk_step_after_its_job_ended_does_nothing(cluster: Cluster,
                                                            fh: HostHandle) -> None:
    """(g) Per-disk steps still queued when the worker died, or delivered again, ran
    after their job ended and left snapshots no record names."""
    from workers.app import make_app
    from workers.routing import TASK_DISK, inflight_queue

    dom = _domain(cluster, fh, "offd")
    client = cluster.client()
    dom.destroy()
    cluster.wait_inventory(dom)
    arm(cluster, fh, "offline-disk")
    job = client.create(dom.name, name="off", disk_only=True)
    died(fh)
    restart(cluster, fh)
    assert ended(client, job).state == "failed"
    for vdev in dom.vdevs:
        assert internal_snapshots(dom.active(vdev)) == []
    # the broker hands a disk step of that job out again, after it ended
    store: Store = client.store
    entry_req = CreateRequest(job_id=job, domain=dom.uuid, domain_name=dom.name,
                              host=fh.name, name="off", disk_only=True,
                              submitted_at=time.time())
    disk: dict[str, Any] = {"vdev": dom.vdevs[0], "path": dom.active(dom.vdevs[0]),
                            "format": "qcow2", "type": "internal", "strategy": "qemu-img"}
    res = make_app(cluster.settings()).send_task(
        TASK_DISK, args=[entry_req.model_dump(mode="json"), disk],
        queue=inflight_queue(fh.name)).get(timeout=60)
    # turned away before it acts: re-admitted against the ended job (workers/engine/admit.py
    # admit_step) or, past that, skipped by the step itself
    assert res["ok"] is False
    assert res.get("skipped") is True or res.get("error") == "step refused (see the worker log)"
    assert internal_snapshots(dom.active(dom.vdevs[0])) == []
    assert store.get_job(job).state == "failed"
    no_leftovers(fh, dom, client)
