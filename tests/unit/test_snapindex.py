"""The snapshot summary index (issue 11) against fakeredis: every write path keeps the
summaries and the by-time index equal to the full records (generated sequences of
creates, rewrites and deletes, fenced and not), pages are slices of the full listing,
records from before the index are still listed and the rebuild fills it, and bad
summaries are DomsnapErrors."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domsnap.errors import BackendError, InvalidInput, LockLost, SchemaMismatch, UnknownSnapshot
from domsnap.store import Fence, Store
from schemas.config import DomainConfig
from schemas.models import DiskSnapshot, SnapshotRecord
from schemas.summary import SnapshotSummary, parse_summaries, summary_of

U = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
J1 = "11111111-1111-4111-8111-111111111111"


def fresh() -> tuple[Any, Store]:
    r: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return r, Store(r, job_ttl_s=3600)


def rec(name: str, created_at: float = 1.0, *, parent: str | None = None,
        description: str | None = None, disks: int = 0, external: bool = False,
        memory_bytes: int | None = None) -> SnapshotRecord:
    return SnapshotRecord(
        name=name, domain=U, domain_name="domu", host="h1", driver="qemu",
        created_at=created_at, domain_state="running", disk_only=memory_bytes is None,
        parent=parent, description=description, memory_bytes=memory_bytes,
        disks=[DiskSnapshot(vdev=f"xvd{chr(97 + i)}", type="external" if external and i
                            else "internal", format="qcow2", file=f"/i/{i}.qcow2",
                            size_bytes=100 * (i + 1)) for i in range(disks)],
        domain_config=DomainConfig(name="domu", uuid=U))


def expected(store: Store) -> list[SnapshotSummary]:
    return [summary_of(r) for r in store.list_snapshots(U)]


def assert_consistent(store: Store) -> None:
    """The index says exactly what the records say, in their order, page by page."""
    want = expected(store)
    page = store.snapshot_page(U)
    assert page.snapshots == want and page.total == len(want)
    assert store.index_complete(U) and store.index_matches(U)
    assert store.rebuild_index(U) is False  # nothing to repair
    for offset, limit in ((0, 1), (1, 2), (len(want), 3), (0, 0), (2, None)):
        assert store.snapshot_page(U, offset=offset, limit=limit).snapshots == \
            want[offset:None if limit is None else offset + limit]
        assert store.snapshot_page(U, offset=offset, limit=limit, newest_first=True) \
            .snapshots == want[::-1][offset:None if limit is None else offset + limit]
    for s in want:
        assert store.snapshot_summary(U, s.name) == s


# ---------------------------------------------------------------- the summary itself


def test_summary_of_a_record() -> None:
    s = summary_of(rec("a", 5.5, parent="p", description="d", disks=2, external=True,
                       memory_bytes=1000))
    assert s == SnapshotSummary(name="a", created_at=5.5, domain_state="running",
                                disk_only=False, parent="p", description="d",
                                type="external+internal", disks=2, size_bytes=1300)
    bare = summary_of(rec("b"))
    assert (bare.type, bare.disks, bare.size_bytes, bare.parent) == (None, 0, None, None)
    assert json.loads(bare.to_json()) == ["b", 1.0, "running", True, None, None, None, 0,
                                          None, None, 1]


def test_summary_is_small() -> None:
    """What the index holds per snapshot is a fraction of the full record."""
    r = rec("snap-000001", 1764590000.123456, parent="snap-000000", disks=2,
            memory_bytes=1 << 29)
    assert len(summary_of(r).to_json()) < 250 < len(r.model_dump_json())


@given(st.lists(st.builds(rec, st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
                          st.floats(0, 2e9), description=st.none() | st.text(max_size=30),
                          disks=st.integers(0, 3), external=st.booleans(),
                          memory_bytes=st.none() | st.integers(0, 1 << 40)), max_size=5))
def test_summaries_round_trip(recs: list[SnapshotRecord]) -> None:
    sums = [summary_of(r) for r in recs]
    assert parse_summaries([s.to_json() for s in sums]) == sums
    for r, s in zip(recs, sums, strict=True):  # what domsnap_snapshot_bytes adds up
        assert (s.size_bytes or 0) == (r.memory_bytes or 0) + sum(d.size_bytes or 0
                                                                  for d in r.disks)


# ---------------------------------------------------------------- generated write sequences

NAMES = ["a", "b", "c", "d", "e"]
op = st.one_of(
    st.tuples(st.just("commit"), st.sampled_from(NAMES), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("put"), st.lists(st.sampled_from(NAMES), max_size=3, unique=True),
              st.integers(0, 4), st.booleans()),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("stale"), st.sampled_from(NAMES), st.integers(0, 4), st.booleans()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=12))
def test_index_follows_every_write_path(ops: list[tuple[Any, ...]]) -> None:
    """Creates, rewrites (same name, new time: a re-sorted entry) and deletes, through
    the fenced script and the plain transactions alike: the index never drifts."""
    _, store = fresh()
    token = store.acquire_lock(U, J1, 60)
    fence = Fence(J1, token)
    for kind, arg, t, fenced in ops:
        f = fence if fenced else None
        if kind == "commit":
            store.commit_snapshot(rec(arg, float(t), disks=t % 3), job_id=J1, fence=f)
        elif kind == "put":
            store.put_snapshots(U, [rec(n, float(t), description=n) for n in arg],
                                current=arg[0] if arg else False, fence=f)
        elif kind == "remove":
            left = [r for r in store.list_snapshots(U) if r.name != arg]
            store.remove_snapshot(U, arg, updated=[r.model_copy(update={"parent": None})
                                                   for r in left[:1]],
                                  current=left[0].name if left else None, fence=f)
        else:  # a fenced write of someone who lost the lock writes nothing at all
            with pytest.raises(LockLost):
                store.commit_snapshot(rec(arg, float(t)), fence=Fence(J1, token + 1))
        assert_consistent(store)


# ---------------------------------------------------------------- records from before the index


def test_records_written_before_the_index_are_listed_and_rebuilt() -> None:
    r, store = fresh()
    old = [rec("x", 3.0), rec("y", 1.0), rec("z", 2.0)]
    for o in old:  # what an older domsnap wrote: the record only
        r.hset(store.keys.snapshots(U), o.name, o.model_dump_json())
    store.commit_snapshot(rec("new", 4.0))
    assert not store.index_complete(U) and not store.index_matches(U)
    page = store.snapshot_page(U, offset=1, limit=2)
    assert [s.name for s in page.snapshots] == ["z", "x"] and page.total == 4
    assert page.current == "new"
    assert store.snapshot_summary(U, "y") == summary_of(old[1])
    assert store.rebuild_index(U) is True
    assert_consistent(store)
    assert [s.name for s in store.snapshot_page(U).snapshots] == ["y", "z", "x", "new"]


def test_rebuild_drops_entries_without_records() -> None:
    r, store = fresh()
    store.commit_snapshot(rec("a"))
    r.hdel(store.keys.snapshots(U), "a")  # an older worker's delete
    r.hset(store.keys.snapshots(U), "b", rec("b", 2.0).model_dump_json())
    assert store.index_complete(U)  # the counts agree: only the full comparison sees it
    assert not store.index_matches(U)
    assert store.rebuild_index(U) is True
    assert_consistent(store)
    assert [s.name for s in store.snapshot_page(U).snapshots] == ["b"]


def test_a_corrupt_record_stays_out_of_the_index_and_is_reported() -> None:
    r, store = fresh()
    store.commit_snapshot(rec("a"))
    r.hset(store.keys.snapshots(U), "bad", "not json")
    store.rebuild_index(U)
    assert not store.index_complete(U)
    with pytest.raises(BackendError):
        store.snapshot_page(U)


def test_page_arguments_and_unknown_snapshot() -> None:
    _, store = fresh()
    with pytest.raises(InvalidInput):
        store.snapshot_page(U, offset=-1)
    with pytest.raises(InvalidInput):
        store.snapshot_page(U, limit=-1)
    with pytest.raises(UnknownSnapshot):
        store.snapshot_summary(U, "nosuch")
    empty = store.snapshot_page(U, limit=10)
    assert (empty.total, empty.snapshots, empty.current) == (0, [], None)


def test_get_snapshots_of_a_page() -> None:
    _, store = fresh()
    store.put_snapshots(U, [rec("a", 1.0), rec("b", 2.0)])
    assert [x.name for x in store.get_snapshots(U, ["b", "gone", "a"])] == ["b", "a"]
    assert store.get_snapshots(U, []) == []


def test_page_read_again_after_a_delete_in_between(monkeypatch: pytest.MonkeyPatch) -> None:
    r, store = fresh()
    store.put_snapshots(U, [rec("a", 1.0), rec("b", 2.0)])
    real = r.hmget
    calls = []

    def racing(key: str, names: list[str]) -> Any:
        if not calls:  # the first page read races a delete of "a"
            store.remove_snapshot(U, "a", updated=[], current=None)
        calls.append(names)
        return real(key, names)

    monkeypatch.setattr(r, "hmget", racing)
    assert [s.name for s in store.snapshot_page(U, limit=10).snapshots] == ["b"]
    assert calls == [["a", "b"], ["b"]]


@pytest.mark.parametrize("raw, error", [
    ("not json", BackendError), ("[1]", BackendError), ('{"v": 1}', BackendError),
    ("[]", BackendError), ("1, 2", BackendError),
    ('["a", 1, "running", 1, null, null, null, 0, null, null, 1]', BackendError),
    ('["a", "1", "running", true, null, null, null, 0, null, null, 1]', BackendError),
    ('["a", 1, "running", true, null, null, null, 0, null, null, null, 1]', BackendError),
    ('["a", 1, "running", true, null, null, null, 0, null, null, 2]', SchemaMismatch),
    ('["a", 1, "running", true, null, null, null, 0, null, null, "x", 2]', SchemaMismatch)])
def test_bad_summaries_are_domsnap_errors(raw: str, error: type[Exception]) -> None:
    r, store = fresh()
    store.commit_snapshot(rec("a"))
    r.hset(store.keys.summaries(U), "a", raw)
    with pytest.raises(error):
        store.snapshot_page(U)
    with pytest.raises(error):
        store.snapshot_summary(U, "a")


def test_summaries_follow_the_exported_schema() -> None:
    import jsonschema  # a test dependency: missing must fail, not skip

    from schemas import export

    schema = json.loads((export.OUT_DIR / "snapshot-summary.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for r in (rec("a"), rec("b", 2.5, parent="a", description="x", disks=2, external=True,
                            memory_bytes=5)):
        assert list(validator.iter_errors(json.loads(summary_of(r).to_json()))) == []


def test_fsck_reports_and_repairs_an_index_mismatch() -> None:
    from workers.engine.fsck import DomainFacts, check

    facts = DomainFacts(uuid=U, host="h1", snapdir="/nonexistent", index_ok=False)
    found = [f for f in check(facts) if f.kind == "index_mismatch"]
    assert len(found) == 1 and found[0].repairable
    assert not [f for f in check(DomainFacts(uuid=U, host="h1", snapdir="/x"))
                if f.kind == "index_mismatch"]


def test_find_domain_does_not_need_a_live_host() -> None:
    """Listing reads records of a domain whose host is down (Client._find)."""
    import time

    from domsnap.errors import HostUnavailable, UnknownDomain
    from schemas.models import DomainInfo, HostInventory

    _, store = fresh()
    store.publish_inventory(HostInventory(host="h1", driver="qemu", published_at=time.time(),
                                          domains=[DomainInfo(uuid=U, name="domu",
                                                              state="running")]), 5,
                            alive=False)
    with pytest.raises(HostUnavailable):
        store.resolve_domain("domu")
    for ref in ("domu", U, U.upper()):
        assert store.find_domain(ref) == ("h1", DomainInfo(uuid=U, name="domu",
                                                           state="running"))
    with pytest.raises(UnknownDomain):
        store.find_domain("nosuch")
