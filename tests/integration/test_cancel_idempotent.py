"""Idempotent requests (a caller's request_id) and ``domsnap job-cancel``, on a real
worker with real QEMU domains and qcow2 images.

A running job is held at a known point with the job's own host-local lock (the
flock every continuation step takes first, ``<state dir>/locks/<job>.lock``): while
the test holds it, the job is ``running`` and its step waits, exactly as a second
delivery would. A queued job is held at the admission gate by a pause marker of
another job (``<state dir>/pausing/<uuid>``), as a paused domain's operation holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from domsnap.errors import Conflict
from schemas.models import CreateRequest
from tests.integration.cluster import Cluster, Domain, listed_domain, succeeded
from tests.integration.test_create import internal_snapshots
from workers.app import make_app
from workers.routing import TASK_CREATE, host_queue

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture(scope="module")
def dom(cluster: Cluster, h1: str) -> Domain:
    return listed_domain(cluster, h1, "ctl")


def _until(cond: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _raw(cluster: Cluster, dom: Domain, name: str, **extra: object) -> CreateRequest:
    """A request as a control plane sends it: straight onto the host's queue."""
    req = CreateRequest.model_validate({
        "job_id": str(uuidlib.uuid4()), "domain": dom.uuid, "domain_name": dom.name,
        "host": dom.host.name, "name": name, "submitted_at": time.time(),
        "requested_by": "ctl-plane", **extra})
    make_app(cluster.settings()).send_task(TASK_CREATE, args=[req.model_dump(mode="json")],
                                           queue=host_queue(dom.host.name))
    return req


@contextmanager
def held(dom: Domain, job_id: str) -> Iterator[None]:
    """Hold the job's step lock shared, as its offline disk steps do: they run, while a
    step that takes it exclusive (a live capture, the finishing step) waits until we
    let go."""
    locks = dom.host.state_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(locks / f"{job_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _nothing_left(cluster: Cluster, dom: Domain, name: str) -> None:
    client = cluster.client()
    assert name not in {r.name for r in client.snapshots(dom.name)}
    assert cluster.redis.hget(client.store.keys.reserved(dom.uuid), name) is None
    assert client.store.lock_owner(dom.uuid) is None
    snapdir = dom.host.snapshots / dom.uuid
    assert not list(snapdir.glob(f"{name}.*"))
    for path in dom.disks.values():
        assert name not in internal_snapshots(str(path))
    assert dom.state() == "running"


# ---------------------------------------------------------------- request ids


def test_same_request_id_through_the_client_gives_the_same_job(cluster: Cluster,
                                                               dom: Domain) -> None:
    client = cluster.client()
    rid = f"ctl-{uuidlib.uuid4().hex}"
    first = client.create(dom.name, name="idem1", disk_only=True, request_id=rid)
    again = client.create(dom.name, name="idem1", disk_only=True, request_id=rid)
    assert again == first
    job = succeeded(client, first)
    assert job.request_id == rid and job.requested_by
    assert client.create(dom.name, name="idem1", disk_only=True, request_id=rid) == first
    assert [r.name for r in client.snapshots(dom.name)].count("idem1") == 1
    with pytest.raises(Conflict, match="request_id"):  # another request, same id
        client.create(dom.name, name="idem-other", disk_only=True, request_id=rid)
    with pytest.raises(Exception, match="request_id"):
        client.create(dom.name, name="idem2", disk_only=True, request_id="no spaces")
    succeeded(client, client.delete(dom.name, "idem1"))


def test_same_request_id_through_a_raw_message_gives_the_same_job(cluster: Cluster,
                                                                  dom: Domain) -> None:
    client = cluster.client()
    rid = f"raw-{uuidlib.uuid4().hex}"
    first = _raw(cluster, dom, "idem3", disk_only=True, request_id=rid)
    _until(lambda: cluster.redis.exists(client.store.keys.job(first.job_id)), "first job")
    succeeded(client, first.job_id)
    second = _raw(cluster, dom, "idem3", disk_only=True, request_id=rid)  # a new job id
    _until(lambda: cluster.redis.exists(client.store.keys.job(second.job_id)), "second job")
    _until(lambda: client.store.get_job(second.job_id).duplicate_of, "duplicate recorded")
    alias = client.store.get_job(second.job_id)
    assert alias.duplicate_of == first.job_id
    assert client.job(second.job_id).job_id == first.job_id  # read as the first job
    assert client.wait(second.job_id, timeout=30).state == "succeeded"
    assert [r.name for r in client.snapshots(dom.name)].count("idem3") == 1
    # and the client, with the same id, also gets the first job
    assert client.create(dom.name, name="idem3", disk_only=True, request_id=rid) == first.job_id
    succeeded(client, client.delete(dom.name, "idem3"))


# ---------------------------------------------------------------- job-cancel


def test_cancel_a_queued_create(cluster: Cluster, dom: Domain) -> None:
    """Held at the gate (queued), cancelled: it never runs and its name is free."""
    client = cluster.client()
    marker = dom.host.state_dir / "pausing" / str(uuidlib.uuid4())
    marker.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()  # a marker with a far deadline: the host's guard leaves it alone
    marker.write_text(json.dumps({"job_id": "another-job", "since": now, "budget_s": 600,
                                  "deadline": now + 600}))
    try:
        job_id = client.create(dom.name, name="cq1", disk_only=True)
        _until(lambda: any(e.step == "queued" for e in client.store.events(job_id)),
               "the create waits at the gate")
        proc = dom.host.cli("job-cancel", "--json", job_id)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert (out["state"], out["error"]["code"]) == ("failed", "cancelled")
        # the name is free at once
        assert cluster.redis.hget(client.store.keys.reserved(dom.uuid), "cq1") is None
    finally:
        marker.unlink()
    _until(lambda: any(e.step == "failed" for e in client.store.events(job_id)),
           "the worker dropped it")
    assert not any(e.step == "admitted" for e in client.store.events(job_id))
    assert client.job(job_id).error.code == "cancelled"  # type: ignore[union-attr]
    _nothing_left(cluster, dom, "cq1")
    again = dom.host.cli("job-cancel", job_id)  # it has ended: nothing to cancel
    assert again.returncode == 4 and "has ended" in again.stderr
    audit = [e for e in client.audit(50) if e.job_id == job_id]
    assert [(e.op, e.outcome) for e in audit][:1] == [("cancel", "succeeded")]


def test_cancel_a_running_live_create(cluster: Cluster, dom: Domain) -> None:
    """Running, its capture step held: cancelled, it stops before pausing the domain."""
    client = cluster.client()
    job_id = str(uuidlib.uuid4())
    with held(dom, job_id):
        req = _raw(cluster, dom, "cr1", job_id=job_id, type="internal")
        _until(lambda: cluster.redis.exists(client.store.keys.job(job_id))
               and client.job(job_id).state == "running", "the create is running")
        job = client.cancel(job_id, requested_by="ops-team")
        assert job.state == "running"
    ended = client.wait(req.job_id, timeout=60)
    assert (ended.state, ended.error.code) == ("failed", "cancelled"), ended  # type: ignore[union-attr]
    _nothing_left(cluster, dom, "cr1")
    who = {(e.op, e.who, e.outcome) for e in client.audit(50) if e.job_id == job_id}
    assert who == {("cancel", "ops-team", "requested"), ("create", "ctl-plane", "failed")}
    log = [json.loads(line) for line in
           (dom.host.state_dir / "audit.jsonl").read_text().splitlines()]
    assert any(e["job_id"] == job_id and e["outcome"] == "failed" for e in log)
    assert (dom.host.state_dir / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_cancel_a_running_offline_create_rolls_back_its_disks(cluster: Cluster,
                                                              h1: str) -> None:
    """A shut-off domain: both disk steps ran, the finishing step is held; cancelled,
    it removes the internal snapshots the disk steps took."""
    client = cluster.client()
    off = cluster.create_domain(h1, f"ctl-off-{uuidlib.uuid4().hex[:6]}", guest=False,
                                start=False)
    cluster.wait_inventory(off)
    job_id = str(uuidlib.uuid4())
    with held(off, job_id):
        _raw(cluster, off, "co1", job_id=job_id, disk_only=True)
        _until(lambda: cluster.redis.exists(client.store.keys.job(job_id)) and sum(
            e.step == "disk" for e in client.store.events(job_id)) == 2, "both disks taken")
        assert all("co1" in internal_snapshots(str(p)) for p in off.disks.values())
        proc = off.host.cli("job-cancel", "--no-wait", job_id)
        assert proc.returncode == 0 and "cancel requested" in proc.stdout, proc.stderr
    ended = client.wait(job_id, timeout=60)
    assert (ended.state, ended.error.code) == ("failed", "cancelled"), ended  # type: ignore[union-attr]
    for path in off.disks.values():
        assert "co1" not in internal_snapshots(str(path))
    assert "co1" not in {r.name for r in client.snapshots(off.name)}
    assert not list((off.host.snapshots / off.uuid).glob("co1.*"))


def test_domain_commands_are_audited(cluster: Cluster, dom: Domain) -> None:
    dom.pause()
    dom.unpause()
    entries = cluster.client().audit(20)
    mine = [(e.op, e.outcome) for e in entries if e.domain == dom.name]
    assert mine[-2:] == [("domain-pause", "succeeded"), ("domain-unpause", "succeeded")]
    proc = dom.host.cli("audit", "--local", "--json", "--limit", "2")
    assert [e["op"] for e in json.loads(proc.stdout)] == ["domain-pause", "domain-unpause"]
    assert Path(dom.host.state_dir / "audit.jsonl").exists()
