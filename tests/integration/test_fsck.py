"""``domsnap fsck`` against a real worker, real QEMU and real qcow2 images: a clean
domain is clean; injected damage (a lost sidecar, a lost Redis record, a dangling
current, orphan files) is reported and nothing is touched without --repair; --repair
fixes it and says so; after Redis loses every key of the fleet, --repair rebuilds
all records (and current) from the host."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.integration.cluster import Cluster, Domain, listed_domain, succeeded

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture(scope="module")
def dom(cluster: Cluster, hv_host: str) -> Domain:
    """On each driver (qemu; xl: the stand-in over real QEMU)."""
    d = listed_domain(cluster, hv_host, "fsck")
    client = cluster.client()
    succeeded(client, client.create(d.name, name="s1"))  # memory + internal
    succeeded(client, client.create(d.name, name="s2", disk_only=True, type="external"))
    return d


def fsck(dom: Domain, *args: str) -> tuple[int, list[dict[str, Any]]]:
    proc = dom.host.cli("fsck", "--json", *args)
    assert proc.returncode in (0, 11, 12), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def kinds(reports: list[dict[str, Any]], uuid: str) -> list[tuple[str, str | None]]:
    """The findings about one domain (a --host run also sees other tests' domains)."""
    return sorted((f["kind"], f.get("snapshot") or f.get("path")) for r in reports
                  for f in r["findings"] if f["domain"] == uuid)


def test_a_fresh_domain_is_clean(cluster: Cluster, dom: Domain) -> None:
    rc, reports = fsck(dom, dom.name)
    assert (rc, kinds(reports, dom.uuid)) == (0, [])
    assert reports[0]["domains"] == [dom.uuid] and reports[0]["host"] == dom.host.name


def test_damage_is_reported_then_repaired(cluster: Cluster, dom: Domain) -> None:
    client = cluster.client()
    snapdir = dom.host.snapshots / dom.uuid
    keys = client.store.keys
    # damage: a lost sidecar, a lost Redis record, a dangling current, two orphans
    (snapdir / "s1.json").unlink()
    s2 = client.store.get_snapshot(dom.uuid, "s2")
    cluster.redis.hdel(keys.snapshots(dom.uuid), "s2")
    cluster.redis.hset(keys.meta(dom.uuid), "current", "nosuch")
    (snapdir / "junk.save").write_bytes(b"x" * 100)
    orphan = snapdir / "left.vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(orphan), "1M"], check=True)
    before = sorted(p.name for p in snapdir.iterdir())

    rc, reports = fsck(dom, dom.name)
    assert rc == 11
    assert kinds(reports, dom.uuid) == sorted([
        ("current_mismatch", "nosuch"), ("orphan_file", str(snapdir / "junk.save")),
        ("orphan_file", str(orphan)), ("record_missing", "s2"), ("sidecar_missing", "s1"),
        ("index_mismatch", None)])  # s2's summary outlived its record
    assert all(f["repairable"] and not f["repaired"] for f in reports[0]["findings"])
    assert sorted(p.name for p in snapdir.iterdir()) == before  # nothing touched

    rc, reports = fsck(dom, "--repair", dom.name)
    assert rc == 12, reports
    assert all(f["repaired"] for f in reports[0]["findings"])
    assert not (snapdir / "junk.save").exists() and not orphan.exists()
    assert (snapdir / "s1.json").exists()
    assert client.store.get_snapshot(dom.uuid, "s2") == s2
    assert client.current(dom.name) == "s2"  # the host's copy of current won
    assert client.store.index_matches(dom.uuid)
    assert fsck(dom, dom.name)[0] == 0
    entry = client.audit(5)[-1]
    assert (entry.op, entry.outcome, entry.domain) == ("fsck-repair", "succeeded", dom.uuid)


def test_records_from_before_the_summary_index_are_indexed_by_repair(cluster: Cluster,
                                                                      dom: Domain) -> None:
    """Records written before the index existed (issue 11): listed all the same, and
    fsck --repair builds their summaries and by-time index."""
    client = cluster.client()
    keys = client.store.keys
    want = [s.name for s in client.snapshot_page(dom.name).snapshots]
    cluster.redis.delete(keys.summaries(dom.uuid), keys.by_time(dom.uuid))
    assert [s.name for s in client.snapshot_page(dom.name).snapshots] == want
    rc, reports = fsck(dom, dom.name)
    assert (rc, kinds(reports, dom.uuid)) == (11, [("index_mismatch", None)])
    rc, reports = fsck(dom, "--repair", dom.name)
    assert rc == 12 and all(f["repaired"] for f in reports[0]["findings"])
    assert client.store.index_matches(dom.uuid) and client.store.index_complete(dom.uuid)
    assert [s.name for s in client.snapshot_page(dom.name).snapshots] == want
    assert fsck(dom, dom.name)[0] == 0


def test_format_lie_and_user_images_are_reported_never_removed(cluster: Cluster,
                                                               dom: Domain) -> None:
    """A record that says raw for a qcow2 image is a mismatch (the class of bug that
    destroys data); fsck --repair leaves it (and the image) alone."""
    client = cluster.client()
    rec = client.store.get_snapshot(dom.uuid, "s1")
    lie = rec.model_copy(update={"disks": [d.model_copy(update={"format": "raw"})
                                           if d.vdev == rec.disks[0].vdev else d
                                           for d in rec.disks]})
    client.store.put_snapshots(dom.uuid, [lie])
    (dom.host.snapshots / dom.uuid / "s1.json").write_text(lie.model_dump_json())
    try:
        rc, reports = fsck(dom, "--repair", dom.name)
        assert rc == 11
        assert kinds(reports, dom.uuid) == [("format_mismatch", "s1")]
        assert not reports[0]["findings"][0]["repaired"]
        assert all(p.exists() for p in dom.disks.values())
    finally:
        client.store.put_snapshots(dom.uuid, [rec])
        (dom.host.snapshots / dom.uuid / "s1.json").write_text(rec.model_dump_json(indent=2))
    assert fsck(dom, dom.name)[0] == 0


def test_repair_rebuilds_everything_after_redis_lost_it(cluster: Cluster, dom: Domain) -> None:
    client = cluster.client()
    records = {r.name: r for r in client.snapshots(dom.name)}
    assert set(records) == {"s1", "s2"} and client.current(dom.name) == "s2"
    cluster.cleanup_redis()  # every key of this fleet: records, current, index, jobs
    assert cluster.redis.hgetall(client.store.keys.snapshots(dom.uuid)) == {}
    deadline = time.monotonic() + 30
    while not client.store.host_alive(dom.host.name):  # the heartbeat comes back
        assert time.monotonic() < deadline, "the worker never published again"
        time.sleep(0.2)
    rc, reports = fsck(dom, "--repair", "--host", dom.host.name)
    assert rc in (11, 12) and dom.uuid in reports[0]["domains"]
    found = kinds(reports, dom.uuid)
    assert ("record_missing", "s1") in found and ("record_missing", "s2") in found, found
    assert {r.name: r for r in client.store.list_snapshots(dom.uuid)} == records
    assert client.store.current(dom.uuid) == "s2"
    cluster.wait_inventory(dom)  # the heartbeat republishes the index
    assert fsck(dom, dom.name)[0] == 0
    # the rebuilt records are usable: delete one through the queue
    succeeded(client, client.delete(dom.name, "s2"))
    assert client.current(dom.name) == "s1"
    assert fsck(dom, dom.name)[0] == 0


def test_busy_domain_is_skipped(cluster: Cluster, dom: Domain) -> None:
    client = cluster.client()
    client.store.acquire_lock(dom.uuid, "some-other-job", 60)
    try:
        rc, reports = fsck(dom, "--repair", dom.name)
    finally:
        client.store.release_lock(dom.uuid, "some-other-job")
    assert rc == 0 and reports[0]["domains"] == []
    assert "some-other-job" in reports[0]["skipped"][dom.uuid]


def test_local_mode_and_bad_arguments(cluster: Cluster, dom: Domain) -> None:
    proc = dom.host.cli("fsck", "--local", dom.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 domain(s) checked, 0 problem(s)" in proc.stdout
    proc = dom.host.cli("fsck", "--host", dom.host.name, dom.name)
    assert proc.returncode == 2 and "DOMAIN or --host" in proc.stderr
    proc = dom.host.cli("fsck", "--host", "no-such-host")
    assert proc.returncode == 6 and "no-such-host" in proc.stderr
    rc, reports = fsck(dom, "--host", dom.host.name)
    assert dom.uuid in reports[0]["domains"] and kinds(reports, dom.uuid) == []
