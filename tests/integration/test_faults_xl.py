"""Fault tests on a dom0 (the xl driver, the stand-in ``xl`` over real QEMU), on
domains that mix a qcow2 and a raw disk: a real ``domsnap worker`` SIGKILLed at an
exact step of create, revert and delete, then started again (or, for the
save/restore window, nobody comes but the host's guard).

The save/restore window (a stub-domain device model: no QMP socket in dom0) is
where a dead worker hurts most on Xen: ``xl save`` has destroyed the domain and its
RAM is only in the window's file. The window's mark (:mod:`workers.drivers.xlwindow`)
lets the guard restore it within seconds, and start-up recovery then finishes or
rolls back the operation.

After each: the domain runs, every disk reads the bytes the model says (what was
written before the operation, nothing lost), ``qemu-img check`` passes, no journal,
mark, scratch file, orphan image or lock is left, and the next operation works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from domsnap.client import Client
from tests.integration.cluster import Cluster, Domain, HostHandle, unique_name
from tests.integration.model import check_images, read_slots
from tests.integration.test_faults import arm, died, ended, no_leftovers, ok, restart

pytestmark = [pytest.mark.integration, pytest.mark.vm]

CHUNK = 64 * 1024
BEFORE, AFTER = 0x3C, 0x4D  # written before the snapshot, and after it


@pytest.fixture(scope="module")
def xh(cluster: Cluster) -> HostHandle:
    # these faults are of the `xl save -p` path and the save/restore window; the live
    # path (xl migrate) has its own in test_xl_live.py
    return cluster.start_worker(f"fx-{cluster.suffix}", driver="xl",
                                DOMSNAP_XL_MEMORY_STRATEGY="save")


def _mixed(cluster: Cluster, h: HostHandle, prefix: str, *, stub: bool) -> Domain:
    """A running domain on a qcow2 and a raw disk, each holding BEFORE at offset 0
    (written offline, so a stub domain without QMP has it too)."""
    if h.proc is None:
        restart(cluster, h)
    name = unique_name(prefix)
    files = []
    for i, fmt in enumerate(("qcow2", "raw")):
        path = cluster.make_disk(h, f"{name}-{i}", fmt=fmt)
        subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0x{BEFORE:02x} 0 {CHUNK}",
                        str(path)], check=True, capture_output=True, timeout=60)
        files.append((path, fmt))
    extra = ["device_model_stubdomain_override = 1"] if stub else []
    dom = cluster.create_domain(h.name, name, guest=False, disk_files=files, extra_cfg=extra)
    cluster.wait_inventory(dom)
    assert dom.qmp.exists() != stub
    return dom


def _fmt(path: str) -> str:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return str(json.loads(out)["format"])


def _holds(dom: Domain, pattern: int) -> None:
    """Every disk of the domain, as it would open now, reads ``pattern`` at 0; every
    image it uses passes ``qemu-img check``."""
    for vdev in dom.vdevs:
        active = dom.active(vdev)
        assert read_slots(active, _fmt(active), {0: pattern}) == {0: True}, (vdev, active)
    images = [dom.active(v) for v in dom.vdevs]
    assert check_images([p for p in images if _fmt(p) == "qcow2"], leaks_ok=set()) == []


def _windows_clear(h: HostHandle) -> None:
    assert not list((h.state_dir / "xl" / "windows").glob("*")), "a window mark is left"
    assert not list((h.state_dir / "xl" / "scratch").glob("*.save")), "a scratch save is left"


def _comes_back(dom: Domain, timeout: float = 60) -> None:
    """The guard restores the domain a dead worker's window left down."""
    deadline = time.monotonic() + timeout
    while dom.state() != "running":
        assert time.monotonic() < deadline, f"{dom.name} is {dom.state()}, not restored"
        time.sleep(0.2)


def _deleted(h: HostHandle, dom: Domain, client: Client, job: str, pattern: int) -> None:
    """A delete of the domain's only snapshot, carried forward after the kill: the
    domain runs on its base images, which read ``pattern``; nothing is left."""
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    assert dom.state() == "running"
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    _holds(dom, pattern)
    assert client.snapshots(dom.name) == []
    no_leftovers(h, dom, client)


# ---------------------------------------------------------------- the save/restore window


@pytest.mark.parametrize("point", ["xl-window-saved", "xl-window-worked"])
def test_create_killed_in_the_window_brings_the_domain_back(
        cluster: Cluster, xh: HostHandle, point: str) -> None:
    """Killed with the domain saved and destroyed (before the disks, or after them and
    before ``xl restore``): the guard restores the domain from the window's file
    without a worker; start-up recovery then rolls the create back."""
    dom = _mixed(cluster, xh, "xwin", stub=True)
    client = cluster.client()
    arm(cluster, xh, point)
    job = client.create(dom.name, name="cut", type="external", disk_only=True)
    died(xh)
    _comes_back(dom)  # nobody restarted the worker: the guard did it
    restart(cluster, xh)
    rec = ended(client, job)
    assert rec.state == "failed" and rec.error is not None
    assert "rolled back" in rec.error.message
    assert dom.state() == "running"
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    _holds(dom, BEFORE)
    _windows_clear(xh)
    no_leftovers(xh, dom, client)
    ok(client, client.create(dom.name, name="cut", type="external", disk_only=True))
    _holds(dom, BEFORE)
    _windows_clear(xh)


def test_memory_create_killed_in_the_window_keeps_no_memory_file(
        cluster: Cluster, xh: HostHandle) -> None:
    """The window saved into the snapshot's own memory file: the domain comes back from
    it, then the rolled-back create removes it (no half snapshot)."""
    dom = _mixed(cluster, xh, "xwm", stub=True)
    client = cluster.client()
    arm(cluster, xh, "xl-window-worked")
    job = client.create(dom.name, name="mem", type="external")
    died(xh)
    _comes_back(dom)
    restart(cluster, xh)
    assert ended(client, job).state == "failed"
    assert dom.state() == "running"
    assert not list((xh.snapshots / dom.uuid).glob("*.save"))
    _holds(dom, BEFORE)
    _windows_clear(xh)
    no_leftovers(xh, dom, client)


def test_delete_killed_in_the_merge_window_is_carried_forward(
        cluster: Cluster, xh: HostHandle) -> None:
    """A stub domain's merge runs in a window: killed after ``qemu-img commit`` and
    before the restore, the domain comes back on the config it had (its overlay,
    merged down already), and the restarted worker finishes the delete."""
    dom = _mixed(cluster, xh, "xwd", stub=True)
    client = cluster.client()
    ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    arm(cluster, xh, "xl-window-worked")
    job = client.delete(dom.name, "e1")
    died(xh)
    _comes_back(dom)
    restart(cluster, xh)
    _deleted(xh, dom, client, job, BEFORE)
    _windows_clear(xh)


# ---------------------------------------------------------------- through the device model


def _write_after(dom: Domain) -> None:
    from tests.integration.diskdata import write_pattern

    for vdev in dom.vdevs:
        write_pattern(dom, vdev, 0, AFTER)


@pytest.mark.parametrize("point", ["commit-sidecar", "admit-gate"])
def test_create_killed_on_mixed_disks(cluster: Cluster, xh: HostHandle, point: str) -> None:
    """Killed between the sidecar and the Redis commit (the snapshot is kept and
    reported), or at the admission gate (failed, nothing touched)."""
    dom = _mixed(cluster, xh, "xcr", stub=False)
    client = cluster.client()
    arm(cluster, xh, point)
    job = client.create(dom.name, name="s1", type="external", disk_only=True)
    died(xh)
    restart(cluster, xh)
    rec = ended(client, job)
    if point == "commit-sidecar":
        assert rec.state == "succeeded" and rec.result["recovered"] is True  # type: ignore[index]
        snap = client.snapshot(dom.name, "s1")
        assert [d.format for d in snap.disks] == ["qcow2", "raw"]
        assert [dom.active(d.vdev) for d in snap.disks] == [d.overlay for d in snap.disks]
    else:
        assert rec.state == "failed" and client.snapshots(dom.name) == []
    _holds(dom, BEFORE)
    no_leftovers(xh, dom, client)
    _write_after(dom)
    ok(client, client.create(dom.name, name="s2", type="external", disk_only=True))
    _holds(dom, AFTER)


@pytest.mark.parametrize("point", ["revert-after-stop", "revert-after-disks"])
def test_revert_killed_on_mixed_disks(cluster: Cluster, xh: HostHandle, point: str) -> None:
    """Killed after the domain was stopped, or after the new overlays: the revert is
    carried forward; both disks read what they held at the snapshot."""
    dom = _mixed(cluster, xh, "xrv", stub=False)
    client = cluster.client()
    ok(client, client.create(dom.name, name="x1", type="external", disk_only=True))
    _write_after(dom)
    _holds(dom, AFTER)
    arm(cluster, xh, point)
    job = client.revert(dom.name, "x1", start="running")
    died(xh)
    restart(cluster, xh)
    assert ok(client, job).result["recovered"] is True  # type: ignore[index]
    assert dom.state() == "running"
    _holds(dom, BEFORE)
    for vdev in dom.vdevs:
        assert ".r" in Path(dom.active(vdev)).name  # the revert's fresh overlay
    no_leftovers(xh, dom, client)


@pytest.mark.parametrize("point", ["commit-ready", "delete-after-commit"])
def test_delete_killed_on_mixed_disks(cluster: Cluster, xh: HostHandle, point: str) -> None:
    """Killed with the device model's commit job ready, or right after the merge: the
    delete is carried forward; the data written after the snapshot survives in the
    disks that stay (the raw one included)."""
    dom = _mixed(cluster, xh, "xdl", stub=False)
    client = cluster.client()
    ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    _write_after(dom)
    arm(cluster, xh, point)
    job = client.delete(dom.name, "e1")
    died(xh)
    restart(cluster, xh)
    _deleted(xh, dom, client, job, AFTER)
    ok(client, client.create(dom.name, name="next", type="external", disk_only=True))
    ok(client, client.delete(dom.name, "next"))
    _holds(dom, AFTER)


# ---------------------------------------------------------------- a worker killed in xl save


def _suspended_by_save(dom: Domain, timeout: float = 120) -> None:
    """Wait until ``xl list`` shows the guest shut down for the save's suspend."""
    deadline = time.monotonic() + timeout
    while True:
        row = dom.host.xl("list", dom.name).stdout.splitlines()[-1].split()
        if row[4] == "---ss-":
            return
        assert time.monotonic() < deadline, f"{dom.name} never suspended: {row}"
        time.sleep(0.05)


def _xl_save_pids(h: HostHandle, file: str) -> list[int]:
    """The stand-in ``xl save`` processes writing ``file``."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("xlstandin/xl") for a in argv) and "save" in argv and file in argv:
            pids.append(int(d.name))
    return pids


def test_xl_save_killed_while_the_worker_lives_resumes_the_domain(
        cluster: Cluster, xh: HostHandle) -> None:
    """SIGKILL ``xl save -p`` itself mid-write, the worker alive (found in the nested Xen
    lab: the domain stayed ``---ss-``, which no xl verb resumes, for good). The step
    resumes the suspended domain, the create fails and is rolled back, nothing is left."""
    dom = _mixed(cluster, xh, "xkill", stub=False)
    (xh.xen / "domains" / dom.uuid / "slow-save").write_text("6\n")
    client = cluster.client()
    job = client.create(dom.name, name="cut2", type="external")
    _suspended_by_save(dom)
    memory = str(xh.snapshots / dom.uuid / "cut2.save")
    deadline = time.monotonic() + 60
    while not (pids := _xl_save_pids(xh, memory)):
        assert time.monotonic() < deadline, "no xl save process found"
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    rec = ended(client, job)
    assert rec.state == "failed" and rec.error is not None
    row = dom.host.xl("list", dom.name).stdout.splitlines()[-1].split()
    assert "s" not in row[4] and "p" not in row[4], row  # not ---ss-, not paused
    assert dom.state() == "running"
    (xh.xen / "domains" / dom.uuid / "slow-save").unlink()
    _holds(dom, BEFORE)
    assert client.snapshots(dom.name) == []
    assert not Path(memory).exists()
    no_leftovers(xh, dom, client)
    ok(client, client.create(dom.name, name="next2", type="external"))  # and it goes on


def test_worker_killed_during_xl_save_leaves_the_save_to_finish(
        cluster: Cluster, xh: HostHandle) -> None:
    """SIGKILL the worker while ``xl save -p`` writes the guest's memory (the guest is
    suspended, ``---ss-``). The save no longer dies with it (its output goes to files,
    not to pipes of the dead worker): it completes; start-up recovery waits for it, puts
    the domain back to running and rolls the create back."""
    dom = _mixed(cluster, xh, "xsave", stub=False)
    (xh.xen / "domains" / dom.uuid / "slow-save").write_text("6\n")
    client = cluster.client()
    job = client.create(dom.name, name="cut", type="external")
    _suspended_by_save(dom)
    assert xh.proc is not None
    os.killpg(xh.proc.pid, signal.SIGKILL)  # the worker and both pools, as in a power cut
    xh.proc.wait()
    xh.proc = None
    restart(cluster, xh)
    rec = ended(client, job)
    assert rec.state == "failed" and rec.error is not None
    assert "rolled back" in rec.error.message
    assert dom.state() == "running"
    saves = (xh.xen / "log" / "saves.log").read_text().splitlines()
    assert any(line.startswith(f"{dom.uuid} ") and line.endswith(" completed")
               for line in saves), "the xl save died with the worker"
    _holds(dom, BEFORE)
    assert client.snapshots(dom.name) == []
    assert not (xh.snapshots / dom.uuid / "cut.save").exists()
    no_leftovers(xh, dom, client)
    _windows_clear(xh)
    ok(client, client.create(dom.name, name="next", type="external"))  # and it goes on
