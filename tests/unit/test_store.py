"""The Redis store against fakeredis (with Lua, via lupa): names, locks, records,
jobs, events, inventory, schema versions, key layout, and a Redis that is down."""

from __future__ import annotations

import json
import re
import uuid as _uuid
from typing import Any

import fakeredis
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from domsnap.errors import (
    DomainLocked,
    DomsnapError,
    HostUnavailable,
    SchemaMismatch,
    SnapshotExists,
    StoreUnavailable,
    UnknownDomain,
    UnknownJob,
    UnknownSnapshot,
)
from domsnap.keys import Keys
from domsnap.store import Store
from schemas.config import DomainConfig
from schemas.models import DomainInfo, HostInventory, JobRecord, SnapshotRecord

U = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
U2 = "0b0f3b70-5a8e-4b8c-9d57-1e2f3a4b5c6d"
J1 = "11111111-1111-4111-8111-111111111111"
J2 = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def r() -> Any:
    """A fresh fakeredis (typed Any: redis-py's stubs type replies as sync | async)."""
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def store(r: Any) -> Store:
    return Store(r, job_ttl_s=3600)


def rec(name: str, *, created_at: float = 1.0, parent: str | None = None,
        domain: str = U) -> SnapshotRecord:
    return SnapshotRecord(
        name=name, domain=domain, domain_name="domu", host="h1", driver="qemu",
        created_at=created_at, domain_state="running", disk_only=False, parent=parent,
        domain_config=DomainConfig(name="domu", uuid=domain),
    )


def job(job_id: str = J1, **kw: Any) -> JobRecord:
    base: dict[str, Any] = dict(job_id=job_id, op="create", domain=U, host="h1", name="s1",
                                submitted_at=100.0)
    base.update(kw)
    return JobRecord(**base)


def inventory(host: str = "h1", domains: list[DomainInfo] | None = None) -> HostInventory:
    if domains is None:
        domains = [DomainInfo(uuid=U, name="domu", state="running")]
    return HostInventory(host=host, driver="qemu", published_at=1000.0, domains=domains)


# ---------------------------------------------------------------- names


def test_reserve_name_ok_and_same_job_again(store: Store, r: Any) -> None:
    store.reserve_name(U, "s1", J1)
    assert r.hget(store.keys.reserved(U), "s1") == J1
    store.reserve_name(U, "s1", J1)  # redelivered create: harmless
    assert r.hgetall(store.keys.reserved(U)) == {"s1": J1}


def test_reserve_name_by_other_job_names_the_owner(store: Store, r: Any) -> None:
    store.reserve_name(U, "s1", J1)
    with pytest.raises(SnapshotExists) as info:
        store.reserve_name(U, "s1", J2)
    assert J1 in str(info.value)
    assert info.value.details["job_id"] == J1
    assert info.value.details["name"] == "s1"
    assert r.hget(store.keys.reserved(U), "s1") == J1  # unchanged


def test_reserve_name_of_existing_record(store: Store, r: Any) -> None:
    store.commit_snapshot(rec("s1"))
    with pytest.raises(SnapshotExists) as info:
        store.reserve_name(U, "s1", J2)
    assert "already exists" in str(info.value)
    assert not r.hexists(store.keys.reserved(U), "s1")


def test_reserve_name_is_per_domain(store: Store) -> None:
    store.reserve_name(U, "s1", J1)
    store.reserve_name(U2, "s1", J2)  # same name, other domain: fine


def test_release_name_only_by_owner(store: Store, r: Any) -> None:
    store.reserve_name(U, "s1", J1)
    store.release_name(U, "s1", J2)
    assert r.hget(store.keys.reserved(U), "s1") == J1
    store.release_name(U, "s1", J1)
    assert not r.hexists(store.keys.reserved(U), "s1")
    store.reserve_name(U, "s1", J2)  # free again
    store.release_name(U, "s1", J1)  # no-op, no error
    assert r.hget(store.keys.reserved(U), "s1") == J2


# ---------------------------------------------------------------- locks


def test_acquire_lock_owner_reacquires(store: Store, r: Any) -> None:
    store.acquire_lock(U, J1, 60)
    assert store.lock_owner(U) == J1
    assert 0 < r.ttl(store.keys.lock(U)) <= 60
    store.acquire_lock(U, J1, 120)  # redelivery of the same job
    assert store.lock_owner(U) == J1
    assert 60 < r.ttl(store.keys.lock(U)) <= 120


def test_acquire_lock_by_other_job_names_owner(store: Store) -> None:
    store.acquire_lock(U, J1, 60)
    with pytest.raises(DomainLocked) as info:
        store.acquire_lock(U, J2, 60)
    assert J1 in str(info.value)
    assert info.value.details == {"domain": U, "job_id": J1}
    assert store.lock_owner(U) == J1


def test_release_lock_only_by_owner(store: Store) -> None:
    store.acquire_lock(U, J1, 60)
    assert store.release_lock(U, J2) is False
    assert store.lock_owner(U) == J1
    assert store.release_lock(U, J1) is True
    assert store.lock_owner(U) is None
    assert store.release_lock(U, J1) is False
    store.acquire_lock(U, J2, 60)  # free for the next job
    assert store.lock_owner(U) == J2


def test_locks_are_per_domain(store: Store) -> None:
    store.acquire_lock(U, J1, 60)
    store.acquire_lock(U2, J2, 60)
    assert (store.lock_owner(U), store.lock_owner(U2)) == (J1, J2)


# ---------------------------------------------------------------- snapshot records


def test_commit_makes_current_and_drops_reservation(store: Store, r: Any) -> None:
    store.reserve_name(U, "s1", J1)
    record = rec("s1")
    store.commit_snapshot(record, job_id=J1)
    assert store.get_snapshot(U, "s1") == record
    assert store.current(U) == "s1"
    assert not r.hexists(store.keys.reserved(U), "s1")


def test_commit_is_one_transaction(store: Store, r: Any,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """All writes (record, its summary and index entry, current, reservation) go through
    one MULTI/EXEC pipeline."""
    seen: list[tuple[bool, list[str]]] = []
    real_pipeline = r.pipeline

    def spy(transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = real_pipeline(transaction=transaction, shard_hint=shard_hint)
        real_execute = pipe.execute

        def execute(raise_on_error: bool = True) -> Any:
            seen.append((transaction, [str(c[0][0]) for c in pipe.command_stack]))
            return real_execute(raise_on_error)

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(r, "pipeline", spy)
    store.reserve_name(U, "s1", J1)
    store.commit_snapshot(rec("s1"), job_id=J1)
    assert seen == [(True, ["HSET", "HSET", "ZADD", "HSET", "HDEL"])]


def test_commit_moves_current(store: Store) -> None:
    store.commit_snapshot(rec("a", created_at=1))
    store.commit_snapshot(rec("b", created_at=2, parent="a"))
    assert store.current(U) == "b"
    assert store.get_snapshot(U, "b").parent == "a"


def test_get_unknown_snapshot(store: Store) -> None:
    with pytest.raises(UnknownSnapshot) as info:
        store.get_snapshot(U, "nope")
    assert "nope" in str(info.value)
    assert store.current(U) is None


def test_list_snapshots_sorted_by_created_at(store: Store) -> None:
    for name, t in (("m", 3.0), ("z", 1.0), ("a", 2.0), ("b", 2.0)):
        store.commit_snapshot(rec(name, created_at=t))
    assert [x.name for x in store.list_snapshots(U)] == ["z", "a", "b", "m"]
    assert store.list_snapshots(U2) == []


def test_remove_snapshot_rewrites_children_and_current(store: Store) -> None:
    store.commit_snapshot(rec("a", created_at=1))
    store.commit_snapshot(rec("b", created_at=2, parent="a"))
    store.commit_snapshot(rec("c", created_at=3, parent="b"))
    store.remove_snapshot(U, "b", updated=[rec("c", created_at=3, parent="a")], current="c")
    assert [x.name for x in store.list_snapshots(U)] == ["a", "c"]
    assert store.get_snapshot(U, "c").parent == "a"
    assert store.current(U) == "c"
    with pytest.raises(UnknownSnapshot):
        store.get_snapshot(U, "b")
    store.remove_snapshot(U, "c", updated=[], current="a")
    assert store.current(U) == "a"
    store.remove_snapshot(U, "a", updated=[], current=None)
    assert store.list_snapshots(U) == []
    assert store.current(U) is None


def test_put_snapshots_current_handling(store: Store) -> None:
    store.put_snapshots(U, [rec("a", created_at=1), rec("b", created_at=2)])
    assert [x.name for x in store.list_snapshots(U)] == ["a", "b"]
    assert store.current(U) is None  # False (default): pointer untouched
    store.put_snapshots(U, [], current="a")
    assert store.current(U) == "a"
    store.put_snapshots(U, [rec("c", created_at=3)])
    assert store.current(U) == "a"  # still untouched
    store.put_snapshots(U, [rec("c", created_at=3)], current="c")
    assert store.current(U) == "c"
    store.put_snapshots(U, [], current=None)
    assert store.current(U) is None
    assert len(store.list_snapshots(U)) == 3


# ---------------------------------------------------------------- jobs


def test_create_job_is_idempotent(store: Store, r: Any) -> None:
    first = job()
    assert store.create_job(first) is True
    assert store.create_job(job(name="other")) is False  # NX: first write wins
    assert store.get_job(J1) == first
    assert 3500 < r.ttl(store.keys.job(J1)) <= 3600


def test_update_job(store: Store, r: Any) -> None:
    store.create_job(job())
    r.expire(store.keys.job(J1), 10)
    updated = store.update_job(J1, state="running", started_at=101.0)
    assert (updated.state, updated.started_at) == ("running", 101.0)
    assert store.get_job(J1) == updated
    assert store.get_job(J1).name == "s1"  # other fields kept
    assert r.ttl(store.keys.job(J1)) > 3500  # TTL renewed
    done = store.update_job(J1, state="succeeded", result={"name": "s1"})
    assert store.get_job(J1) == done
    assert done.started_at == 101.0


def test_update_unknown_job(store: Store) -> None:
    with pytest.raises(UnknownJob):
        store.update_job(J2, state="running")


def test_get_unknown_job(store: Store) -> None:
    with pytest.raises(UnknownJob) as info:
        store.get_job(J2)
    assert J2 in str(info.value)
    assert info.value.details["job_id"] == J2


# ---------------------------------------------------------------- events


def test_event_seq_strictly_increasing_across_jobs(store: Store, r: Any) -> None:
    events = [store.add_event(j, f"step{i}", f"m{i}", {"i": i})
              for i, j in enumerate([J1, J2, J1, J2, J1])]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    got = store.events(J1)
    assert [e.step for e in got] == ["step0", "step2", "step4"]
    assert [e.data for e in got] == [{"i": 0}, {"i": 2}, {"i": 4}]
    assert got == [events[0], events[2], events[4]]
    assert [e.step for e in store.events(J1, start=1)] == ["step2", "step4"]
    assert [e.seq for e in store.events(J2)] == [seqs[1], seqs[3]]
    assert 3500 < r.ttl(store.keys.job_events(J1)) <= 3600
    assert store.events("33333333-3333-4333-8333-333333333333") == []


# ---------------------------------------------------------------- inventory


def test_resolve_by_name_and_by_uuid(store: Store) -> None:
    inv = inventory()
    store.publish_inventory(inv, ttl_s=20)
    host, info = store.resolve_domain("domu")
    assert (host, info) == ("h1", inv.domains[0])
    assert store.resolve_domain(U) == ("h1", inv.domains[0])
    assert store.resolve_domain(U.upper()) == ("h1", inv.domains[0])
    assert store.inventory("h1") == inv
    assert store.hosts() == ["h1"]


def test_resolve_unknown_domain(store: Store) -> None:
    store.publish_inventory(inventory(), ttl_s=20)
    for ref in ("nosuch", U2):
        with pytest.raises(UnknownDomain) as info:
            store.resolve_domain(ref)
        assert ref in str(info.value)


def test_domain_gone_from_inventory_is_unknown(store: Store) -> None:
    store.publish_inventory(inventory(), ttl_s=20)
    store.publish_inventory(inventory(domains=[]), ttl_s=20)
    with pytest.raises(UnknownDomain):
        store.resolve_domain("domu")


def test_alive_ttl_and_withdraw(store: Store, r: Any) -> None:
    store.publish_inventory(inventory(), ttl_s=20)
    assert store.host_alive("h1")
    assert 19_000 < r.pttl(store.keys.alive("h1")) <= 20_000
    store.withdraw_host("h1")
    assert not store.host_alive("h1")
    with pytest.raises(HostUnavailable) as info:
        store.resolve_domain("domu")
    assert "h1" in str(info.value)
    assert info.value.details == {"host": "h1", "domain": U}


def test_publish_not_alive_does_not_mark_alive(store: Store) -> None:
    store.publish_inventory(inventory(), ttl_s=20, alive=False)
    assert not store.host_alive("h1")
    assert store.inventory("h1") is not None
    with pytest.raises(HostUnavailable):
        store.resolve_domain(U)
    store.publish_inventory(inventory(), ttl_s=20)
    assert store.resolve_domain(U)[0] == "h1"


def test_domain_moved_to_other_host(store: Store) -> None:
    store.publish_inventory(inventory("h1"), ttl_s=20)
    store.publish_inventory(inventory("h1", domains=[]), ttl_s=20)
    store.publish_inventory(inventory("h2"), ttl_s=20)
    assert store.resolve_domain("domu")[0] == "h2"
    assert store.hosts() == ["h1", "h2"]


# ---------------------------------------------------------------- schema versions


def _other_version(model_json: str) -> str:
    data = json.loads(model_json)
    data["schema_version"] = 2
    return json.dumps(data)


def test_snapshot_record_of_other_version(store: Store, r: Any) -> None:
    r.hset(store.keys.snapshots(U), "s1", _other_version(rec("s1").model_dump_json()))
    with pytest.raises(SchemaMismatch) as info:
        store.get_snapshot(U, "s1")
    assert "schema_version 2" in str(info.value)
    with pytest.raises(SchemaMismatch):
        store.list_snapshots(U)


def test_job_and_inventory_of_other_version(store: Store, r: Any) -> None:
    r.set(store.keys.job(J1), _other_version(job().model_dump_json()))
    with pytest.raises(SchemaMismatch) as info:
        store.get_job(J1)
    assert "schema_version 2" in str(info.value)
    with pytest.raises(SchemaMismatch):
        store.update_job(J1, state="running")
    r.set(store.keys.inventory("h1"), _other_version(inventory().model_dump_json()))
    with pytest.raises(SchemaMismatch):
        store.inventory("h1")


def test_future_record_with_new_field_is_schema_mismatch(store: Store,
                                                         r: Any) -> None:
    data = json.loads(rec("s1").model_dump_json())
    data.update(schema_version=2, added_in_v2=True)
    r.hset(store.keys.snapshots(U), "s1", json.dumps(data))
    with pytest.raises(SchemaMismatch) as info:
        store.get_snapshot(U, "s1")
    assert "schema_version 2" in str(info.value)


def _corrupt(kind: str) -> str:
    data = json.loads(rec("s1").model_dump_json())
    if kind == "missing field":
        del data["created_at"]
    elif kind == "wrong type":
        data["created_at"] = "yesterday"
    else:
        return "not json"
    return json.dumps(data)


@pytest.mark.parametrize("kind", ["not json", "missing field", "wrong type"])
def test_corrupt_current_version_record(store: Store, r: Any,
                                        kind: str) -> None:
    """A damaged record of *this* schema version must come out as a DomsnapError
    (errors.py: every failure leaving a domsnap module is one; redis/pydantic errors
    are translated at the store boundary), and not as SchemaMismatch, which means
    "a record of another schema version"."""
    r.hset(store.keys.snapshots(U), "s1", _corrupt(kind))
    with pytest.raises(DomsnapError) as info:
        store.get_snapshot(U, "s1")
    assert not isinstance(info.value, SchemaMismatch), str(info.value)


# ---------------------------------------------------------------- key layout


_TAG = re.compile(r"\{([^{}]*)\}")


def test_domain_keys_share_the_uuid_hash_tag() -> None:
    keys = Keys("domsnap")
    for key in (keys.snapshots(U), keys.meta(U), keys.reserved(U), keys.lock(U),
                keys.summaries(U), keys.by_time(U)):
        assert _TAG.findall(key) == [U], key
        # Redis Cluster hashes the substring between the first { and the next }
        assert key[key.index("{") + 1:key.index("}")] == U
    assert len({keys.snapshots(U), keys.meta(U), keys.reserved(U), keys.lock(U),
                keys.summaries(U), keys.by_time(U)}) == 6
    for key in (keys.job(J1), keys.job_events(J1)):
        assert _TAG.findall(key) == [J1]
    for key in (keys.inventory("h1"), keys.alive("h1")):
        assert _TAG.findall(key) == ["h1"]


def test_store_writes_domain_keys_under_its_hash_tag(store: Store,
                                                     r: Any) -> None:
    store.reserve_name(U, "s1", J1)
    store.acquire_lock(U, J1, 60)
    store.commit_snapshot(rec("s1"))
    store.reserve_name(U, "s2", J1)
    domain_keys = [k for k in r.keys("*") if U in k]
    # snapshots, summaries, bytime, meta, reserved, lock, lock:token, fence
    assert len(domain_keys) == 8
    for key in domain_keys:
        assert key[key.index("{") + 1:key.index("}")] == U


def test_prefix_is_used(r: Any) -> None:
    s = Store(r, prefix="other")
    s.acquire_lock(U, J1, 60)
    assert sorted(r.keys("*")) == sorted([f"other:dom:{{{U}}}:lock",
                                          f"other:dom:{{{U}}}:lock:token",
                                          f"other:dom:{{{U}}}:fence",
                                          f"other:job:{{{J1}}}:fence"])


# ---------------------------------------------------------------- Redis down


def test_redis_down_is_store_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1,
                         decode_responses=True, retry=Retry(NoBackoff(), 0))
    s = Store(client)
    calls = [
        lambda: s.get_job(J1),
        lambda: s.reserve_name(U, "s1", J1),
        lambda: s.acquire_lock(U, J1, 60),
        lambda: s.commit_snapshot(rec("s1")),
        lambda: s.update_job(J1, state="running"),
        lambda: s.resolve_domain("domu"),
        s.ping,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert info.value.code == "store_unavailable"
        assert "Redis" in str(info.value)


def test_uuid_constants_are_uuids() -> None:
    for value in (U, U2, J1, J2):
        assert str(_uuid.UUID(value)) == value
