"""What only a dom0 has, through the queue on an xl worker (the stand-in xl over real
QEMU): the strategy chosen per disk and reported in the job result, the
save/restore fallback where no QMP socket serves the disks (a stub-domain device
model), a PV guest that does not suspend, blkback disks that are not LVM, the
xl save file, and the registry that outlives xl's stale view of a domain."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from schemas.models import DiskChoice
from tests.integration.cluster import Cluster, Domain, unique_name
from tests.integration.cluster import succeeded as _ok
from tests.integration.diskdata import (
    assert_state,
    backing_of,
    internal_snapshots,
    qmp,
    write_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"


def _dom(cluster: Cluster, x1: str, prefix: str, **kw: object) -> Domain:
    dom = cluster.create_domain(x1, unique_name(prefix), guest=False, **kw)  # type: ignore[arg-type]
    cluster.wait_inventory(dom)
    return dom


def _strategies(job_result: dict[str, object]) -> dict[str, str]:
    disks = job_result["disks"]
    assert isinstance(disks, list)
    return {d["vdev"]: d["strategy"] for d in disks}


def test_live_snapshot_goes_through_the_device_model(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xs-qmp")
    client = cluster.client()
    job = _ok(client, client.create(dom.name, name="s1"))
    assert job.result is not None
    assert _strategies(job.result) == dict.fromkeys(dom.vdevs[:2], "qmp")
    rec = client.snapshot(dom.name, "s1")
    assert rec.driver == "xl" and rec.memory_file is not None
    assert [d.strategy for d in rec.disks] == ["qmp", "qmp"]
    with open(rec.memory_file, "rb") as fh:  # xl's own save format, guest RAM 0600
        assert fh.read(len(XL_MAGIC)) == XL_MAGIC
    assert stat.S_IMODE(os.stat(rec.memory_file).st_mode) == 0o600
    assert dom.state() == "running"
    nodes = {n["node-name"] for n in qmp(dom, "query-named-block-nodes")}
    assert {f"{v}-qcow2" for v in dom.vdevs[:2]} <= nodes  # Xen's naming, found by path


def test_external_snapshot_outlives_xls_stale_view(cluster: Cluster, x1: str) -> None:
    """After a live external snapshot xl still names the old image; domsnap's registry
    names the overlay, so a revert restores the domain on the right images."""
    dom = _dom(cluster, x1, "xs-ext")
    client = cluster.client()
    write_state(dom, dom.vdevs[0], {1: 0x11})
    _ok(client, client.create(dom.name, name="e1", type="external"))
    rec = client.snapshot(dom.name, "e1")
    listed = json.loads(dom.host.xl("list", "-l", dom.name).stdout)[0]["config"]["disks"]
    assert [d["pdev_path"] for d in listed] == [str(p) for p in dom.disks.values()]
    assert [dom.active(d.vdev) for d in rec.disks] == [d.overlay for d in rec.disks]
    write_state(dom, dom.vdevs[0], {1: 0x22})
    _ok(client, client.revert(dom.name, "e1"))
    assert dom.state() == "running"
    active = dom.active(dom.vdevs[0])
    assert backing_of(active) == rec.disks[0].file
    files = {n["file"] for n in qmp(dom, "query-named-block-nodes")}
    assert active in files  # the restored device model runs on the new overlay
    assert_state(active, {1: 0x11}, "after revert")


def test_stub_domain_falls_back_to_save_and_restore(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xs-stub", extra_cfg=["device_model_stubdomain_override = 1"])
    assert not dom.qmp.exists()  # no device model in dom0: no QMP socket
    client = cluster.client()
    for name, kind, disk_only in (("f1", "internal", False), ("f2", "external", True)):
        job = _ok(client, client.create(dom.name, name=name, type=kind, disk_only=disk_only))
        assert job.result is not None
        assert set(_strategies(job.result).values()) == {"save-restore"}
        assert dom.state() == "running"
    rec1, rec2 = client.snapshot(dom.name, "f1"), client.snapshot(dom.name, "f2")
    for d in rec1.disks:
        assert "f1" in internal_snapshots(d.file)
    assert [dom.active(d.vdev) for d in rec2.disks] == [d.overlay for d in rec2.disks]
    assert not list((dom.host.state_dir / "xl" / "scratch").glob("*.save"))
    _ok(client, client.revert(dom.name, "f1"))
    assert dom.state() == "running"
    _ok(client, client.delete(dom.name, "f2"))  # merge while "running": another window
    _ok(client, client.delete(dom.name, "f1"))
    assert dom.state() == "running"
    assert client.snapshots(dom.name) == []


def test_guest_that_does_not_suspend_fails_the_job_and_keeps_running(
        cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xs-nosus")
    (dom.host.xen / "domains" / dom.uuid / "no-suspend").touch()
    client = cluster.client()
    job = client.wait(client.create(dom.name, name="n1"), timeout=120)
    assert job.state == "failed"
    assert job.error is not None and "did not suspend" in job.error.message
    assert dom.state() == "running"
    assert client.snapshots(dom.name) == []
    for path in dom.disks.values():
        assert internal_snapshots(path) == []
    assert not (dom.host.snapshots / dom.uuid / "n1.save").exists()
    assert client.store.lock_owner(dom.uuid) is None


def test_blkback_disk_that_is_not_lvm_is_refused_by_name(cluster: Cluster, x1: str,
                                                         ) -> None:
    h = cluster.host(x1)
    raw = h.images / "phy-raw.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    # a domain whose second disk is a raw file on blkback
    name = unique_name("xs-phy2")
    qcow = h.images / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "64M"], check=True)
    cfg = h.root / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = 64\n'
                   f'disk = [ "{qcow},qcow2,xvda,rw", '
                   f'"format=raw, vdev=xvdb, access=rw, backendtype=phy, target={raw}" ]\n')
    h.xl("create", str(cfg))
    uuid = json.loads(h.xl("list", "-l", name).stdout)[0]["config"]["c_info"]["uuid"]
    d = Domain(host=h, name=name, uuid=uuid, disks={"xvda": qcow, "xvdb": raw})
    cluster.wait_inventory(d)
    client = cluster.client()
    job = client.wait(client.create(name, name="p1", type="external"), timeout=120)
    assert job.state == "failed"
    assert job.error is not None and "xvdb" in job.error.message
    assert "not an LVM logical volume" in job.error.message
    assert client.snapshots(name) == [] and d.state() == "running"
    # the qcow2 disk alone is fine
    job = _ok(client, client.create(name, name="p2", disks=[DiskChoice(vdev="xvda")]))
    assert job.result is not None and _strategies(job.result) == {"xvda": "qmp"}
