"""Locks with leases and fencing, on the real Redis: a holder that lost the domain
lock (its lease ran out and another job took it, or recovery took its job over with
a new token) cannot commit, renew, release or end the job; the holder can."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterator

import pytest

from domsnap.errors import LockLost
from domsnap.store import Fence, Store
from schemas.config import DomainConfig
from schemas.models import JobRecord, SnapshotRecord
from tests.integration.cluster import REDIS_URL, Cluster

pytestmark = [pytest.mark.integration]


def _rec(name: str, uuid: str) -> SnapshotRecord:
    return SnapshotRecord(name=name, domain=uuid, domain_name="domu", host="h1",
                          driver="qemu", created_at=time.time(), domain_state="running",
                          disk_only=True, domain_config=DomainConfig(name="domu", uuid=uuid))


def _job(job_id: str, uuid: str) -> JobRecord:
    return JobRecord(job_id=job_id, op="create", domain=uuid, host="h1", name="s1",
                     submitted_at=time.time())


@pytest.fixture
def store(cluster: Cluster) -> Iterator[Store]:
    """A store under a prefix of its own, emptied afterwards: its 60 s leases would
    otherwise expire during a later test of the session, whose "nothing in Redis
    changed" checks (test_bad_messages) read every key of the session's prefix."""
    st = Store.from_url(REDIS_URL, prefix=f"{cluster.prefix}:fence", job_ttl_s=600)
    try:
        yield st
    finally:
        keys = list(st.r.scan_iter(f"{cluster.prefix}:fence:*", count=1000))
        if keys:
            st.r.delete(*keys)


def test_a_holder_whose_lease_ran_out_cannot_commit(store: Store) -> None:
    uuid, a, b = (str(uuidlib.uuid4()) for _ in range(3))
    fa = Fence(a, store.acquire_lock(uuid, a, 60))
    store.commit_snapshot(_rec("s1", uuid), job_id=a, fence=fa)  # the holder commits
    store.r.delete(store.keys.lock(uuid))  # the lease ran out (what its expiry does)
    fb = Fence(b, store.acquire_lock(uuid, b, 60))
    assert fb.token > fa.token  # monotonic
    with pytest.raises(LockLost):
        store.commit_snapshot(_rec("s2", uuid), job_id=a, fence=fa)
    with pytest.raises(LockLost):
        store.put_snapshots(uuid, [_rec("s1", uuid)], current=None, fence=fa)
    with pytest.raises(LockLost):
        store.remove_snapshot(uuid, "s1", updated=[], current=None, fence=fa)
    assert store.renew_lock(fa, uuid, 60) is False
    assert store.release_lock(uuid, a, fence=fa) is False
    # nothing the stale holder tried changed anything
    assert [r.name for r in store.list_snapshots(uuid)] == ["s1"]
    assert store.current(uuid) == "s1"
    assert store.lock_owner(uuid) == b
    # the new holder renews, commits and releases
    assert store.renew_lock(fb, uuid, 120) is True
    assert 60 < store.r.ttl(store.keys.lock(uuid)) <= 120
    store.commit_snapshot(_rec("s2", uuid), job_id=b, fence=fb)
    assert store.current(uuid) == "s2"
    assert store.release_lock(uuid, b, fence=fb) is True
    assert store.lock_owner(uuid) is None


def test_a_job_taken_over_cannot_be_ended_by_its_stale_attempt(store: Store) -> None:
    uuid, a = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    store.create_job(_job(a, uuid))
    stale = Fence(a, store.acquire_lock(uuid, a, 60))
    fresh = Fence(a, store.acquire_lock(uuid, a, 60))  # recovery takes the job over
    assert fresh.token > stale.token
    with pytest.raises(LockLost):
        store.update_job(a, fence=stale, state="failed", finished_at=time.time())
    with pytest.raises(LockLost):
        store.commit_snapshot(_rec("s1", uuid), job_id=a, fence=stale)
    assert store.get_job(a).state == "queued"
    store.commit_snapshot(_rec("s1", uuid), job_id=a, fence=fresh)
    store.update_job(a, fence=fresh, state="succeeded", finished_at=time.time())
    assert store.get_job(a).state == "succeeded"
