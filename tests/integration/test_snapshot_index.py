"""The snapshot summary index on the real Redis (issue 11): every write path keeps it
equal to the records, pages and the stdlib fast path agree with the full records,
``domsnap snapshot-list`` (a real subprocess) pages through it, records written
before it are still listed and the rebuild fills it, and the ACL users of
docs/acl.md read it (the reader, the fast path with its AUTH) but never write it
(the submitter). No workers: a unique key prefix, deleted afterwards."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from domsnap import fastlist
from domsnap.acl import acl_rules, setuser_command
from domsnap.errors import StoreUnavailable
from domsnap.store import Fence, Store
from schemas.config import DomainConfig
from schemas.models import DiskSnapshot, DomainInfo, HostInventory, SnapshotRecord
from schemas.summary import summary_of
from tests.integration.cluster import REDIS_URL

pytestmark = [pytest.mark.integration]

DOM = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
REPO = Path(__file__).resolve().parents[2]
JOB = "11111111-1111-4111-8111-111111111111"


def rec(i: int, t: float | None = None) -> SnapshotRecord:
    return SnapshotRecord(
        name=f"n{i:04d}", domain=DOM, domain_name="idxdom", host="hidx", driver="qemu",
        created_at=1_700_000_000.0 + (i if t is None else t), domain_state="running",
        disk_only=i % 3 == 0, parent=f"n{i - 1:04d}" if i else None,
        disks=[DiskSnapshot(vdev="vda", type="internal", format="qcow2", file="/i/a.qcow2",
                            size_bytes=i)],
        domain_config=DomainConfig(name="idxdom", uuid=DOM))


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"dsidx-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield p
    finally:
        for key in r.scan_iter(f"{p}:*", count=1000):
            r.delete(key)


@pytest.fixture
def store(prefix: str) -> Store:
    st = Store.from_url(REDIS_URL, prefix=prefix, job_ttl_s=600)
    st.publish_inventory(HostInventory(host="hidx", driver="qemu", published_at=time.time(),
                                       domains=[DomainInfo(uuid=DOM, name="idxdom",
                                                           state="running")]), 60)
    return st


def env_for(prefix: str, url: str = REDIS_URL) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DOMSNAP_")}
    return {**env, "DOMSNAP_REDIS_URL": url, "DOMSNAP_KEY_PREFIX": prefix,
            "PYTHONPATH": str(REPO)}


def cli(prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "domsnap", *args], env=env_for(prefix),
                          capture_output=True, text=True, timeout=60, check=False)


def assert_index_is_the_records(store: Store) -> None:
    want = [summary_of(r) for r in store.list_snapshots(DOM)]
    assert store.snapshot_page(DOM).snapshots == want
    assert store.index_matches(DOM)
    for off, lim, newest in ((0, 10, False), (5, 7, True), (len(want) - 1, 5, False)):
        page = store.snapshot_page(DOM, offset=off, limit=lim, newest_first=newest)
        assert page.snapshots == (want[::-1] if newest else want)[off:off + lim]
        assert fastlist.page("idxdom", offset=off, limit=lim, newest_first=newest,
                             environ={"DOMSNAP_REDIS_URL": REDIS_URL,
                                      "DOMSNAP_KEY_PREFIX": store.keys.prefix}) == page


def test_every_write_path_keeps_the_index(store: Store) -> None:
    store.put_snapshots(DOM, [rec(i) for i in range(200)], current="n0199")
    token = store.acquire_lock(DOM, JOB, 60)
    fence = Fence(JOB, token)
    store.commit_snapshot(rec(200), job_id=JOB, fence=fence)
    store.put_snapshots(DOM, [rec(5, t=500.0)], fence=fence)  # rewritten: a new place
    store.remove_snapshot(DOM, "n0010", updated=[rec(11).model_copy(update={"parent": None})],
                          current="n0200", fence=fence)
    store.remove_snapshot(DOM, "n0020", updated=[], current="n0200")
    store.release_lock(DOM, JOB, fence=fence)
    assert_index_is_the_records(store)
    page = store.snapshot_page(DOM, newest_first=True, limit=1)
    assert [s.name for s in page.snapshots] == ["n0005"] and page.total == 199
    assert page.current == "n0200"


def test_cli_pages_through_the_index(store: Store, prefix: str) -> None:
    store.put_snapshots(DOM, [rec(i) for i in range(50)], current="n0003")
    proc = cli(prefix, "snapshot-list", "--limit", "4", "--offset", "2", "idxdom")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["n0002", "n0003", "n0004", "n0005"]
    assert lines[2].split()[1] == "*"
    assert "(4 of 50 snapshots, from offset 2)" in proc.stderr
    proc = cli(prefix, "snapshot-list", "--json", "--newest-first", "--limit", "2", "idxdom")
    data = json.loads(proc.stdout)
    assert data["snapshots"] == [rec(i).model_dump(mode="json") for i in (49, 48)]
    assert cli(prefix, "snapshot-list", "-n", "nosuch", "idxdom").returncode == 3
    proc = cli(prefix, "snapshot-list", "nosuch")
    assert proc.returncode == 3 and "unknown domain 'nosuch'" in proc.stderr


def test_records_from_before_the_index(store: Store, prefix: str) -> None:
    store.put_snapshots(DOM, [rec(i) for i in range(3, 6)])
    for i in (0, 1, 2):  # what an older domsnap wrote: the record alone
        store.r.hset(store.keys.snapshots(DOM), rec(i).name, rec(i).model_dump_json())
    env = {"DOMSNAP_REDIS_URL": REDIS_URL, "DOMSNAP_KEY_PREFIX": prefix}
    assert fastlist.page("idxdom", environ=env) is None  # the full path answers
    assert [s.name for s in store.snapshot_page(DOM).snapshots] == [rec(i).name
                                                                    for i in range(6)]
    proc = cli(prefix, "snapshot-list", "idxdom")
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == \
        [rec(i).name for i in range(6)]
    assert store.rebuild_index(DOM) is True and store.rebuild_index(DOM) is False
    assert_index_is_the_records(store)


def test_memory_per_snapshot(store: Store) -> None:
    """Not a timing: the index costs a fraction of the records it summarises."""
    store.put_snapshots(DOM, [rec(i) for i in range(500)])
    usage = {k: int(store.r.memory_usage(k, samples=0))
             for k in (store.keys.snapshots(DOM), store.keys.summaries(DOM),
                       store.keys.by_time(DOM))}
    per = {k.rsplit(":", 1)[1]: v / 500 for k, v in usage.items()}
    assert per["summaries"] + per["bytime"] < per["snapshots"] / 2, per


# ---------------------------------------------------------------- ACL users


def url_for(user: str, password: str) -> str:
    parts = urlsplit(REDIS_URL)
    return urlunsplit((parts.scheme, f"{user}:{password}@{parts.hostname}:{parts.port or 6379}",
                       parts.path, "", ""))


def test_acl_reader_reads_and_submitter_cannot_write_the_index(store: Store,
                                                               prefix: str) -> None:
    store.put_snapshots(DOM, [rec(i) for i in range(5)], current="n0004")
    admin: Any = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    made = []
    try:
        urls = {}
        for kind in ("reader", "submitter"):
            name, pw = f"dsidx-{kind}-{secrets.token_hex(3)}", secrets.token_hex(12)
            admin.execute_command(*setuser_command(name, pw, acl_rules(prefix)[kind]))
            made.append(name)
            urls[kind] = url_for(name, pw)
        want = store.snapshot_page(DOM)
        for kind, url in urls.items():
            st = Store.from_url(url, prefix=prefix)
            assert st.snapshot_page(DOM) == want, kind
            assert fastlist.page("idxdom", environ={"DOMSNAP_REDIS_URL": url,
                                                    "DOMSNAP_KEY_PREFIX": prefix}) == want
            raw: Any = redis.Redis.from_url(url, decode_responses=True)
            for fn, args in ((raw.hset, (store.keys.summaries(DOM), "x", "{}")),
                             (raw.zadd, (store.keys.by_time(DOM), {"x": 1.0})),
                             (raw.delete, (store.keys.by_time(DOM),))):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    fn(*args)
        assert store.snapshot_page(DOM) == want
        # a record the index misses: only a worker's user may fill it in
        admin.hset(store.keys.snapshots(DOM), rec(9).name, rec(9).model_dump_json())
        for url in urls.values():
            with pytest.raises(StoreUnavailable):
                Store.from_url(url, prefix=prefix).rebuild_index(DOM)
        assert store.rebuild_index(DOM) is True
    finally:
        for name in made:
            admin.execute_command("ACL", "DELUSER", name)
