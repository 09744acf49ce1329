"""The Redis ACL users of docs/acl.md, on the real Redis: each can do its part and
nothing more. The reader reads; the submitter (a control plane) submits a create
that a worker runs, and cannot write snapshot records, current, locks or the
inventory; the worker's own user runs a whole worker (a snapshot is taken through
it) and cannot flush or reconfigure Redis. Users get a per-test suffix and are
deleted afterwards."""

from __future__ import annotations

import secrets
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from domsnap.acl import acl_rules, setuser_command
from domsnap.client import Client
from domsnap.errors import StoreUnavailable
from domsnap.settings import Settings
from domsnap.store import Store
from schemas.config import DomainConfig
from schemas.models import HostInventory, JobRecord, SnapshotRecord
from tests.integration.cluster import REDIS_URL, Cluster, succeeded, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def url_for(user: str, password: str) -> str:
    parts = urlsplit(REDIS_URL)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 6379}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@pytest.fixture(scope="module")
def users(cluster: Cluster) -> Iterator[dict[str, str]]:
    """kind -> redis URL of a throwaway ACL user with that kind's rules."""
    suffix = secrets.token_hex(4)
    admin: Any = cluster.redis
    made: dict[str, str] = {}
    try:
        for kind, rules in acl_rules(cluster.prefix).items():
            name, password = f"domsnap-test-{kind}-{suffix}", secrets.token_hex(16)
            admin.execute_command(*setuser_command(name, password, rules))
            made[name] = url_for(name, password)
        yield {k: made[f"domsnap-test-{k}-{suffix}"] for k in ("reader", "submitter", "worker")}
    finally:
        for name in made:
            admin.execute_command("ACL", "DELUSER", name)


def denied(fn: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        fn(*args, **kwargs)
    except redis.exceptions.NoPermissionError:
        return True
    except StoreUnavailable as exc:
        return "NOPERM" in str(exc) or "permission" in str(exc).lower()
    return False


def raw(url: str) -> Any:
    return redis.Redis.from_url(url, decode_responses=True)


def record(cluster: Cluster, uuid: str) -> SnapshotRecord:
    return SnapshotRecord(name="forged", domain=uuid, domain_name="x", host="h", driver="qemu",
                          created_at=1.0, domain_state="running", disk_only=True,
                          domain_config=DomainConfig(name="x", uuid=uuid))


@pytest.fixture(scope="module")
def acl_host(cluster: Cluster, users: dict[str, str]) -> Iterator[str]:
    """A host whose worker talks to Redis (store and broker) as the worker user."""
    name = f"hacl-{cluster.suffix}"
    cluster.start_worker(name, DOMSNAP_REDIS_URL=users["worker"])
    try:
        yield name
    finally:
        cluster.stop_worker(name)


def test_worker_and_submitter_run_a_create_end_to_end(cluster: Cluster, users: dict[str, str],
                                                      acl_host: str) -> None:
    dom = cluster.create_domain(acl_host, unique_name("acl"), guest=False, disks=1)
    cluster.wait_inventory(dom)
    submit = Client(Settings(redis_url=users["submitter"], key_prefix=cluster.prefix))
    job = succeeded(submit, submit.create(dom.name, name="by-ctl", disk_only=True,
                                          request_id=f"acl-{cluster.suffix}"))
    assert job.requested_by
    assert [r.name for r in submit.snapshots(dom.name)] == ["by-ctl"]
    reader = Client(Settings(redis_url=users["reader"], key_prefix=cluster.prefix))
    assert reader.current(dom.name) == "by-ctl"
    assert reader.job(job.job_id).state == "succeeded"
    assert [e.step for e in reader.store.events(job.job_id)][-1] == "done"
    # the submitter may cancel (a job record and its flag) but never write records/locks
    store = Store.from_url(users["submitter"], prefix=cluster.prefix)
    assert denied(store.commit_snapshot, record(cluster, dom.uuid))
    assert denied(store.put_snapshots, dom.uuid, [], current="forged")
    assert denied(store.acquire_lock, dom.uuid, "not-a-job", 60)
    assert denied(store.remove_snapshot, dom.uuid, "by-ctl", updated=[], current=None)
    assert denied(store.publish_inventory, HostInventory(host=acl_host, driver="qemu",
                                                         published_at=time.time(), domains=[]),
                  5.0)
    assert [r.name for r in reader.snapshots(dom.name)] == ["by-ctl"]
    assert [s.name for s in reader.snapshot_page(dom.name).snapshots] == ["by-ctl"]
    assert reader.store.index_matches(dom.uuid)  # the worker's user wrote the index
    assert reader.store.lock_owner(dom.uuid) is None
    # the worker's own user deletes it (and wrote everything the create needed)
    succeeded(submit, submit.delete(dom.name, "by-ctl"))
    assert reader.snapshots(dom.name) == []


def test_waits_are_woken_through_the_acl(cluster: Cluster, users: dict[str, str],
                                        acl_host: str) -> None:
    """The worker's user publishes a job's notify; the submitter's and the reader's
    users may subscribe to it. The waits' safety re-read is an hour: only the notify
    can end them before their timeout."""
    dom = cluster.create_domain(acl_host, unique_name("aclw"), guest=False, disks=1)
    cluster.wait_inventory(dom)
    submit = Client(Settings(redis_url=users["submitter"], key_prefix=cluster.prefix))
    reader = Client(Settings(redis_url=users["reader"], key_prefix=cluster.prefix))
    job_id = submit.create(dom.name, name="woken", disk_only=True)
    with reader.store.watch_job(job_id) as w:
        assert w.subscribed, "the reader may not subscribe to the job's notify channel"
    steps: list[str] = []
    job = submit.wait(job_id, timeout=120, safety_s=3600, on_event=lambda e: steps.append(e.step))
    assert job.state == "succeeded", job.error
    assert steps[-1] == "done"
    assert reader.wait(job_id, timeout=10, safety_s=3600).state == "succeeded"
    # failing a queued job (job-cancel) is the submitter's own write, and it publishes:
    # a waiter on it wakes
    store = Store.from_url(users["submitter"], prefix=cluster.prefix)
    queued = str(uuidlib.uuid4())
    assert store.create_job(JobRecord(job_id=queued, op="create", domain=dom.uuid,
                                      host=acl_host, name="never", submitted_at=time.time()))
    with reader.store.watch_job(queued) as w:
        ended = store.fail_if_queued(queued, {"code": "cancelled", "message": "test",
                                              "details": {}})
        assert ended is not None and ended.state == "failed"
        assert w.wait(10), "the reader's watch heard nothing of the submitter's write"
    succeeded(submit, submit.delete(dom.name, "woken"))


def test_reader_only_reads(cluster: Cluster, users: dict[str, str]) -> None:
    r = raw(users["reader"])
    k = Store.from_url(REDIS_URL, prefix=cluster.prefix).keys
    uuid = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
    assert r.hgetall(k.snapshots(uuid)) == {}
    assert r.get(k.job("11111111-1111-4111-8111-111111111111")) is None
    r.xrevrange(k.audit, count=1)
    assert r.hgetall(k.summaries(uuid)) == {} and r.zrange(k.by_time(uuid), 0, -1) == []
    for fn, args in ((r.hset, (k.snapshots(uuid), "x", "{}")), (r.set, (k.lock(uuid), "j")),
                     (r.hset, (k.summaries(uuid), "x", "[]")),
                     (r.zadd, (k.by_time(uuid), {"x": 1.0})),
                     (r.set, (k.job("j"), "{}")), (r.lpush, ("domsnap.host.h", "m")),
                     (r.hset, (k.reserved(uuid), "x", "j")), (r.flushdb, ()),
                     (r.get, ("not-domsnap:key",))):
        assert denied(fn, *args), fn


def test_submitter_cannot_reach_outside_its_part(cluster: Cluster,
                                                 users: dict[str, str]) -> None:
    r = raw(users["submitter"])
    k = Store.from_url(REDIS_URL, prefix=cluster.prefix).keys
    uuid = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
    for fn, args in ((r.hset, (k.meta(uuid), "current", "x")), (r.delete, (k.snapshots(uuid),)),
                     (r.hset, (k.summaries(uuid), "x", "[]")),
                     (r.zadd, (k.by_time(uuid), {"x": 1.0})), (r.delete, (k.by_time(uuid),)),
                     (r.hset, (k.index_name, "x", uuid)), (r.set, (k.alive("h"), "1")),
                     (r.flushdb, ()), (r.keys, ("*",)), (r.config_get, ("*",)),
                     (r.set, ("not-domsnap:key", "1"))):
        assert denied(fn, *args), fn
    # its own part, directly
    store = Store.from_url(users["submitter"], prefix=cluster.prefix)
    store.claim_name(uuid, "acl-name", "j1")
    store.release_name(uuid, "acl-name", "j1")
    assert store.claim_request(f"acl-raw-{cluster.suffix}", "j1") is None
    store.release_request(f"acl-raw-{cluster.suffix}", "j1")


def test_worker_user_cannot_flush_or_reconfigure(cluster: Cluster,
                                                 users: dict[str, str]) -> None:
    r = raw(users["worker"])
    for fn, args in ((r.flushall, ()), (r.flushdb, ()), (r.config_get, ("*",)),
                     (r.keys, ("*",)), (r.set, ("not-domsnap:key", "1")),
                     (r.execute_command, ("ACL", "LIST"))):
        assert denied(fn, *args), fn
