"""Snapshot create through the queue on real domains: memory + disks, internal and
external, disk-only (live and offline), config files, default names."""

from __future__ import annotations

import json
import stat
import subprocess
import time

import pytest

from schemas.models import JobEvent, SnapshotRecord
from tests.integration.cluster import Cluster, Domain

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def internal_snapshots(path: str) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


def backing_of(path: str) -> str | None:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    value = json.loads(out).get("full-backing-filename")
    return str(value) if value else None


@pytest.fixture(scope="module")
def web(cluster: Cluster, hv_host: str) -> Domain:
    dom = cluster.create_domain(hv_host, "web", guest=False)
    cluster.wait_inventory(dom)
    return dom


def test_domain_snapshot_has_memory_and_every_disk(cluster: Cluster, web: Domain) -> None:
    client = cluster.client()
    events: list[JobEvent] = []
    job = client.wait(client.create(web.name, name="full", description="first"), timeout=120,
                      on_event=events.append)
    assert job.state == "succeeded", job.error
    seen = [ev.step for ev in events]
    assert {"admitted", "capture", "resumed", "done"} <= set(seen)
    rec = client.snapshot(web.name, "full")
    # the resumed event places the pause in time: QEMU's STOP and RESUME stamps
    resumed = next(ev for ev in events if ev.step == "resumed")
    assert resumed.data["pause_ms"] == rec.pause_ms
    if web.host.driver == "qemu":
        stop, resume = resumed.data["stopped_at"], resumed.data["resumed_at"]
        assert job.submitted_at < stop < resume < resumed.ts, (job.submitted_at, resumed)
        assert round((resume - stop) * 1000, 3) == rec.pause_ms
    assert rec.disk_only is False and rec.description == "first"
    assert rec.domain_state == "running"
    assert rec.pause_ms is not None and rec.pause_ms > 0
    assert rec.memory_bytes and rec.memory_bytes > 0
    assert rec.memory_save_ms is not None
    assert [d.vdev for d in rec.disks] == web.vdevs
    for disk in rec.disks:
        assert disk.type == "internal"
        assert "full" in internal_snapshots(disk.file)
    # guest RAM: 0600 in a 0700 directory
    assert rec.memory_file is not None
    mem = web.host.snapshots / web.uuid / "full.save"
    assert rec.memory_file == str(mem)
    assert stat.S_IMODE(mem.stat().st_mode) == 0o600
    assert stat.S_IMODE(mem.parent.stat().st_mode) == 0o700
    # QEMU's migration stream, or xl's save format on a dom0
    magic = b"Xen saved domain, xl format\n \0 \r" if web.host.driver == "xl" else b"QEVM"
    assert mem.read_bytes()[:len(magic)] == magic
    # the sidecar next to the files is the same record as in Redis
    side = SnapshotRecord.model_validate_json((mem.parent / "full.json").read_text())
    assert side == rec
    assert job.result is not None and job.result["pause_ms"] == rec.pause_ms
    assert client.current(web.name) == "full"


def test_external_snapshot_starts_overlays(cluster: Cluster, web: Domain) -> None:
    client = cluster.client()
    before = {v: web.active(v) for v in web.vdevs}
    job = client.wait(client.create(web.name, name="ext", type="external"), timeout=120)
    assert job.state == "succeeded", job.error
    rec = client.snapshot(web.name, "ext")
    for disk in rec.disks:
        assert disk.type == "external"
        assert disk.file == before[disk.vdev]  # the frozen image holds the snapshot
        assert disk.overlay == str(web.host.snapshots / web.uuid / f"ext.{disk.vdev}.qcow2")
        assert backing_of(disk.overlay) == disk.file
        assert web.active(disk.vdev) == disk.overlay  # the domain now writes to the overlay
    assert rec.parent == "full"


def test_disk_only_snapshot_of_running_domain(cluster: Cluster, web: Domain) -> None:
    client = cluster.client()
    job = client.wait(client.create(web.name, name="donly", disk_only=True), timeout=120)
    assert job.state == "succeeded", job.error
    rec = client.snapshot(web.name, "donly")
    assert rec.disk_only and rec.memory_file is None
    assert not (web.host.snapshots / web.uuid / "donly.save").exists()
    for disk in rec.disks:
        assert "donly" in internal_snapshots(disk.file)
    assert web.state() == "running"


def test_default_name_is_the_epoch_second(cluster: Cluster, web: Domain) -> None:
    client = cluster.client()
    t0 = int(time.time())
    job = client.wait(client.create(web.name, disk_only=True), timeout=120)
    assert job.state == "succeeded", job.error
    assert t0 <= int(job.name) <= int(time.time())
    client.wait(client.delete(web.name, job.name), timeout=120)


def test_config_file_chooses_disks_and_types(cluster: Cluster, hv_host: str) -> None:
    dom = cluster.create_domain(hv_host, "cfgdom", guest=False)
    cluster.wait_inventory(dom)
    target = dom.host.images / "cfgdom-root-overlay.qcow2"
    cfg = dom.host.root / "snap.cfg"
    cfg.write_text(
        'name = "rootonly"\n'
        'description="External disk-only\\\n'
        '             snapshot. Only care about the root file system"\n'
        'memory = "no"\n'
        'type = "external"\n'
        f'disk = [ "vdev={dom.vdevs[0]}, format=qcow2, target={target}" ]\n')
    vda, vdb = dom.vdevs[:2]
    vdb_before = dom.active(vdb)
    out = dom.host.cli("snapshot-create", "--json", dom.name, str(cfg), check=True)
    job = json.loads(out.stdout)
    assert job["state"] == "succeeded"
    rec = cluster.client().snapshot(dom.name, "rootonly")
    assert rec.description == ("External disk-only snapshot. Only care about the root "
                               "file system")
    assert rec.disk_only
    assert [(d.vdev, d.type, d.overlay) for d in rec.disks] == [(vda, "external",
                                                                  str(target))]
    assert dom.active(vda) == str(target)
    assert dom.active(vdb) == vdb_before  # not listed: untouched
    assert internal_snapshots(vdb_before) == []


def test_offline_domain_disks_snapshot_in_parallel_tasks(cluster: Cluster, hv_host: str) -> None:
    dom = cluster.create_domain(hv_host, "cold", guest=False, start=False, disks=3)
    cluster.wait_inventory(dom)
    client = cluster.client()
    seen: list[str] = []
    job = client.wait(client.create(dom.name, name="off1", disk_only=True), timeout=120,
                      on_event=lambda ev: seen.append(f"{ev.step}:{ev.message}"))
    assert job.state == "succeeded", job.error
    assert sum(s.startswith("disk:") for s in seen) == 3  # one task per disk
    rec = client.snapshot(dom.name, "off1")
    assert rec.domain_state == "shutoff" and rec.pause_ms is None
    for disk in rec.disks:
        assert internal_snapshots(disk.file) == ["off1"]
    # external, offline: overlays made with qemu-img, the registry names them
    job = client.wait(client.create(dom.name, name="off2", disk_only=True, type="external"),
                      timeout=120)
    assert job.state == "succeeded", job.error
    for disk in client.snapshot(dom.name, "off2").disks:
        assert disk.overlay and backing_of(disk.overlay) == disk.file
        assert dom.active(disk.vdev) == disk.overlay


def test_a_paused_domain_stays_paused_and_can_be_snapshotted_again(cluster: Cluster,
                                                                   hv_host: str) -> None:
    from tests.integration.test_failures import qmp_status

    dom = cluster.create_domain(hv_host, "paused-dom", guest=False, disks=2)
    cluster.wait_inventory(dom)
    dom.pause()
    client = cluster.client()
    for name, disk_only in (("p1", False), ("p2", False), ("p3", True)):
        job = client.wait(client.create(dom.name, name=name, disk_only=disk_only),
                          timeout=120)
        assert job.state == "succeeded", job.error
        assert qmp_status(dom) == "paused"
        rec = client.snapshot(dom.name, name)
        assert rec.domain_state == "paused"
    # reverting to a snapshot of a paused domain brings it back paused
    job = client.wait(client.revert(dom.name, "p1"), timeout=120)
    assert job.state == "succeeded", job.error
    assert qmp_status(dom) == "paused"
    dom.unpause()
    assert qmp_status(dom) == "running"
