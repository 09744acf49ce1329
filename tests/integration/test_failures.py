"""Bad input gets a clear error and changes nothing; failures roll back every part;
one mutating operation per domain at a time (invariants 2, 3, 5, and 1 on the
error paths)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from domsnap.errors import (
    DomainLocked,
    HostUnavailable,
    InvalidInput,
    SnapshotExists,
    UnknownDomain,
    UnknownSnapshot,
)
from tests.integration.cluster import Cluster, Domain
from tests.integration.test_create import internal_snapshots
from workers.block.qmp import QMPClient

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def files_of(dom: Domain) -> set[str]:
    """Every file domsnap could have made or changed for this domain."""
    out: set[str] = set()
    for root in (dom.host.snapshots / dom.uuid, dom.host.images):
        if root.is_dir():
            out |= {str(p) for p in root.iterdir() if p.is_file()}
    return out


def state_of(cluster: Cluster, dom: Domain) -> tuple[object, ...]:
    client = cluster.client()
    return (files_of(dom), [r.model_dump() for r in client.snapshots(dom.name)],
            client.current(dom.name), json.dumps(dom.config(), sort_keys=True),
            {v: internal_snapshots(dom.active(v)) for v in dom.disks})


def qmp_status(dom: Domain) -> str:
    with QMPClient(dom.qmp, timeout=10) as q:
        return str(q.execute("query-status")["status"])


@pytest.fixture(scope="module")
def dom(cluster: Cluster, hv_host: str) -> Domain:
    d = cluster.create_domain(hv_host, "fragile", guest=False)
    cluster.wait_inventory(d)
    job = cluster.client().wait(cluster.client().create(d.name, name="base"), timeout=120)
    assert job.state == "succeeded", job.error
    return d


def test_duplicate_name_is_refused_before_enqueue(cluster: Cluster, dom: Domain) -> None:
    before = state_of(cluster, dom)
    with pytest.raises(SnapshotExists, match="'base' already exists"):
        cluster.client().create(dom.name, name="base")
    proc = dom.host.cli("snapshot-create", "-n", "base", dom.name)
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines()[-1].startswith("domsnap: error: snapshot 'base'")
    assert state_of(cluster, dom) == before


@pytest.mark.parametrize("name", ["a/b", "..", ".", "../../etc/x", "x" * 129, "semi;colon"])
def test_bad_names_name_the_field(cluster: Cluster, dom: Domain, name: str) -> None:
    before = state_of(cluster, dom)
    with pytest.raises(InvalidInput, match="^name: "):
        cluster.client().create(dom.name, name=name)
    proc = dom.host.cli("snapshot-create", "-n", name, dom.name)
    assert proc.returncode == 2 and "invalid snapshot name" in proc.stderr
    assert state_of(cluster, dom) == before


def test_unknown_domain_and_snapshot(cluster: Cluster, dom: Domain) -> None:
    client = cluster.client()
    with pytest.raises(UnknownDomain, match="nosuch"):
        client.create("nosuch")
    assert dom.host.cli("snapshot-create", "nosuch").returncode == 3
    with pytest.raises(UnknownSnapshot, match="ghost"):
        client.revert(dom.name, "ghost")
    with pytest.raises(UnknownSnapshot, match="ghost"):
        client.delete(dom.name, "ghost")
    assert dom.host.cli("snapshot-delete", "-n", "ghost", dom.name).returncode == 3


def test_external_target_outside_roots_changes_nothing(cluster: Cluster, dom: Domain,
                                                       tmp_path: object) -> None:
    before = state_of(cluster, dom)
    cfg = dom.host.root / "escape.cfg"
    cfg.write_text('name = "esc"\ntype = "external"\n'
                   f'disk = [ "vdev={dom.vdevs[0]}, target=/etc/domsnap-escape.qcow2" ]\n')
    proc = dom.host.cli("snapshot-create", dom.name, str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "outside the snapshot roots" in proc.stderr
    assert not os.path.exists("/etc/domsnap-escape.qcow2")
    cfg.write_text(f'name = "esc2"\nmemory = "{dom.host.root}/../../mem.save"\n')
    proc = dom.host.cli("snapshot-create", dom.name, str(cfg))
    assert proc.returncode == 2 and "memory_file" in proc.stderr
    assert state_of(cluster, dom) == before
    assert qmp_status(dom) == "running"


def test_raw_disk_refuses_internal_snapshot(cluster: Cluster, hv_host: str) -> None:
    d = cluster.create_domain(hv_host, "rawdom", guest=False, raw_disk=True)
    cluster.wait_inventory(d)
    before = state_of(cluster, d)
    proc = d.host.cli("snapshot-create", "-n", "r1", d.name)
    assert proc.returncode == 2
    assert f"{d.vdevs[1]} is raw" in proc.stderr and "internal" in proc.stderr
    assert state_of(cluster, d) == before
    # an external snapshot of the same raw disk is fine
    job = cluster.client().wait(cluster.client().create(d.name, name="r2", type="external"),
                                timeout=120)
    assert job.state == "succeeded", job.error


def test_locked_domain_is_refused(cluster: Cluster, dom: Domain) -> None:
    client = cluster.client()
    client.store.acquire_lock(dom.uuid, "00000000-0000-4000-8000-0000000000aa", 60)
    try:
        before = state_of(cluster, dom)
        with pytest.raises(DomainLocked, match="busy"):
            client.create(dom.name, name="while-locked")
        proc = dom.host.cli("snapshot-delete", "-n", "base", dom.name)
        assert proc.returncode == 4 and "busy" in proc.stderr
        assert state_of(cluster, dom) == before
    finally:
        client.store.release_lock(dom.uuid, "00000000-0000-4000-8000-0000000000aa")


def test_concurrent_creates_one_wins(cluster: Cluster, dom: Domain) -> None:
    client = cluster.client()
    jobs = []
    for name in ("race1", "race2", "race3"):
        try:
            jobs.append(client.create(dom.name, name=name))
        except DomainLocked:
            pass  # refused at submit: the first one already holds the lock
    ended = [client.wait(j, timeout=120) for j in jobs]
    ok = [j for j in ended if j.state == "succeeded"]
    refused = [j for j in ended if j.state == "failed"]
    assert len(ok) >= 1
    for j in refused:
        assert j.error is not None and j.error.code == "domain_locked"
    names = {r.name for r in client.snapshots(dom.name)}
    assert {j.name for j in ok} <= names
    assert not ({j.name for j in refused} & names)
    for j in ok:
        client.wait(client.delete(dom.name, j.name), timeout=120)


def test_failed_transaction_leaves_nothing(cluster: Cluster, dom: Domain) -> None:
    """vdb already holds an internal snapshot 'clash' (made behind domsnap's back): the
    atomic transaction fails, so vda gets nothing either; the memory file is removed,
    no record appears, the domain runs, and the lock is free again."""
    with QMPClient(dom.qmp, timeout=10) as q:
        nodes = q.execute("query-named-block-nodes")
        node = next(n["node-name"] for n in nodes
                    if n["file"] == dom.active(dom.vdevs[1]) and n["drv"] == "qcow2")
        q.execute("blockdev-snapshot-internal-sync", {"device": node, "name": "clash"})
    before = state_of(cluster, dom)
    client = cluster.client()
    job = client.wait(client.create(dom.name, name="clash"), timeout=120)
    assert job.state == "failed"
    assert job.error is not None and "clash" in job.error.message
    assert state_of(cluster, dom) == before
    assert "clash" not in internal_snapshots(dom.active(dom.vdevs[0]))
    assert not (dom.host.snapshots / dom.uuid / "clash.save").exists()
    assert qmp_status(dom) == "running"
    assert client.store.lock_owner(dom.uuid) is None
    # and the name is free again for a later try (after the clash is gone)
    with QMPClient(dom.qmp, timeout=10) as q:
        q.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": "clash"})
    job = client.wait(client.create(dom.name, name="clash"), timeout=120)
    assert job.state == "succeeded", job.error


def test_failed_offline_disk_rolls_back_the_others(cluster: Cluster, hv_host: str) -> None:
    d = cluster.create_domain(hv_host, "offfail", guest=False, start=False, disks=3)
    cluster.wait_inventory(d)
    subprocess.run(["qemu-img", "snapshot", "-c", "boom", str(d.disks[d.vdevs[2]])], check=True)
    before = state_of(cluster, d)
    client = cluster.client()
    job = client.wait(client.create(d.name, name="boom", disk_only=True), timeout=120)
    assert job.state == "failed"
    assert job.error is not None and d.vdevs[2] in job.error.message
    assert state_of(cluster, d) == before
    assert internal_snapshots(str(d.disks[d.vdevs[0]])) == []
    assert internal_snapshots(str(d.disks[d.vdevs[1]])) == []


def test_host_down_is_an_error_before_enqueue(cluster: Cluster) -> None:
    name = f"h5-{cluster.suffix}"
    cluster.start_worker(name)
    d = cluster.create_domain(name, "orphan", guest=False, start=False, disks=1)
    cluster.wait_inventory(d)
    cluster.stop_worker(name)
    with pytest.raises(HostUnavailable, match=name):
        cluster.client().create(d.name, disk_only=True)
    proc = d.host.cli("snapshot-create", "--disk-only", d.name)
    assert proc.returncode == 6 and "no live worker" in proc.stderr
    # records of a host that is down stay readable
    assert cluster.client().snapshots(d.name) == []


def test_a_job_is_reported_ended_only_after_its_lock_is_free(cluster: Cluster,
                                                             dom: Domain) -> None:
    """A control plane that submits the next operation as soon as it sees the last one
    end must never be refused with DomainLocked by the job that just ended."""
    client = cluster.client()
    for i in range(8):
        job = client.wait(client.create(dom.name, name=f"seq{i}", disk_only=True),
                          timeout=120, interval=0.0005)
        assert job.state == "succeeded", job.error
        assert client.store.lock_owner(dom.uuid) is None
    for i in range(8):
        job = client.wait(client.delete(dom.name, f"seq{i}"), timeout=120, interval=0.0005)
        assert job.state == "succeeded", job.error
        assert client.store.lock_owner(dom.uuid) is None
