"""Routing: each host's worker publishes its domains; a request names a domain by
name or uuid and runs only on the host that owns it."""

from __future__ import annotations

import time

import pytest

from tests.integration.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def test_requests_run_on_the_owning_host(cluster: Cluster, h1: str, h2: str) -> None:
    a = cluster.create_domain(h1, "route-a", guest=False, disks=1)
    b = cluster.create_domain(h2, "route-b", guest=False, disks=1)
    cluster.wait_inventory(a)
    cluster.wait_inventory(b)
    client = cluster.client()
    assert client.resolve("route-a")[0] == h1
    assert client.resolve(b.uuid)[0] == h2
    assert client.resolve(b.uuid.upper())[0] == h2
    ja = client.wait(client.create("route-a", name="r"), timeout=120)
    jb = client.wait(client.create(b.uuid, name="r"), timeout=120)
    assert (ja.state, jb.state) == ("succeeded", "succeeded"), (ja.error, jb.error)
    assert ja.host == h1 and jb.host == h2
    ra, rb = client.snapshot("route-a", "r"), client.snapshot("route-b", "r")
    assert ra.host == h1 and rb.host == h2
    # files landed on the owning host only
    assert (a.host.snapshots / a.uuid / "r.save").exists()
    assert (b.host.snapshots / b.uuid / "r.save").exists()
    assert not (b.host.snapshots / a.uuid).exists()
    assert not (a.host.snapshots / b.uuid).exists()
    out = a.host.cli("hosts", "--json", check=True).stdout
    assert f'"host": "{h1}"' in out and f'"host": "{h2}"' in out


def test_a_host_consumes_only_its_own_queues(cluster: Cluster, h1: str, h2: str) -> None:
    """A message for h2 put on h1's queue by mistake is refused by h1 and changes
    nothing there (the job says why)."""
    from workers.app import make_app
    from workers.routing import TASK_CREATE, host_queue

    b = cluster.create_domain(h2, "stray", guest=False, disks=1)
    cluster.wait_inventory(b)
    client = cluster.client()
    body = {"job_id": "00000000-0000-4000-8000-00000000beef", "domain": b.uuid,
            "domain_name": b.name, "host": h2, "name": "stray1"}
    make_app(cluster.settings()).send_task(TASK_CREATE, args=[body], queue=host_queue(h1))
    deadline = time.monotonic() + 60
    while not client.store.r.exists(client.store.keys.job(body["job_id"])):
        assert time.monotonic() < deadline, "the stray message was never picked up"
        time.sleep(0.1)
    job = client.wait(body["job_id"], timeout=60)
    assert job.state == "failed" and job.error is not None
    assert f"reached host {h1}" in job.error.message
    assert client.snapshots("stray") == []


@pytest.mark.parametrize("how", ["direct", "celery"])
def test_both_ways_of_enqueueing_reach_the_worker(cluster: Cluster, h1: str, how: str) -> None:
    """The client's direct LPUSH (domsnap/enqueue.py, the default on a redis:// broker)
    and Celery's send_task put the same message on the queue: a real worker runs a
    create, a revert and a delete sent each way, and takes them from the host queue."""
    from workers.routing import host_queue

    dom = cluster.create_domain(h1, f"enq-{how}-{cluster.suffix}", guest=False, disks=1)
    cluster.wait_inventory(dom)
    client = cluster.client(enqueue=how)
    assert (client._direct is not None) == (how == "direct")
    job = client.wait(client.create(dom.name, name="e1", disk_only=True), timeout=120)
    assert job.state == "succeeded", job.error
    job = client.wait(client.revert(dom.name, "e1"), timeout=120)
    assert job.state == "succeeded", job.error
    job = client.wait(client.delete(dom.name, "e1"), timeout=120)
    assert job.state == "succeeded", job.error
    assert client.snapshots(dom.name) == []
    assert client.store.r.llen(host_queue(h1)) == 0  # nothing left behind
