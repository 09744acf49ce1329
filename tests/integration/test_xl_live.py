"""Live memory snapshots on a dom0 (the xl driver, the stand-in ``xl`` over real QEMU):
``xl migrate -s`` into domsnap's receiver, the guest paused for the last round only.

Through real ``domsnap worker`` processes: the strategy recorded per snapshot
(``memory_strategy: live``, a pause, the stream's PAGE_DATA records) on qcow2 + raw
disk mixes, internal and external; the captured file is a valid xl save file, and a
revert brings back memory (the guest counts on from the snapshot) and disks; the
setting ``save``, a hypervisor without log-dirty mode and a paused domain give
``save`` with the reason; a receiver that fails or is killed leaves the guest running
and nothing behind; a worker killed mid-stream, and ``xl migrate`` killed after the
suspend with nobody coming, leave a running domain, intact disks and a rolled-back
journal.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.models import DiskChoice
from tests.integration.cluster import Cluster, Domain, HostHandle, unique_name
from tests.integration.diskdata import assert_state, internal_snapshots, qmp, write_state
from tests.integration.test_faults import arm, died, ended, no_leftovers, ok, restart
from tests.integration.test_faults_xl import BEFORE, _holds, _mixed
from tests.vm.guest import count_boots, read_ticks, wait_for_tick
from workers.drivers.xlstream import XL_MAGIC, StreamParser

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture(scope="module")
def lh(cluster: Cluster) -> Iterator[HostHandle]:
    h = cluster.start_worker(f"lv-{cluster.suffix}", driver="xl")
    yield h
    for key in ("DOMSNAP_XL_MEMORY_STRATEGY", "XL_STANDIN_NO_PV_SHADOW"):
        h.env.pop(key, None)


def _restart_with(cluster: Cluster, h: HostHandle, **env: str) -> None:
    if h.proc is not None:
        cluster.stop_worker(h.name)
    for key in ("DOMSNAP_XL_MEMORY_STRATEGY", "XL_STANDIN_NO_PV_SHADOW", "DOMSNAP_FAULT"):
        h.env.pop(key, None)
    h.env.update(env)
    cluster.start_worker(h.name)


def _arm(cluster: Cluster, h: HostHandle, point: str, **kw: str) -> None:
    """:func:`arm`, then until the client sees the new worker alive (the old one's
    goodbye can land after the new one's first heartbeat)."""
    arm(cluster, h, point, **kw)
    deadline = time.monotonic() + 30
    while not cluster.client().store.host_alive(h.name):
        assert time.monotonic() < deadline, f"{h.name} never seen alive"
        time.sleep(0.2)


def _parsed(path: str) -> StreamParser:
    """The whole memory file through the framing parser: a complete, valid stream."""
    p = StreamParser()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            p.feed(chunk)
    p.finish()
    return p


def _live_dir_clear(h: HostHandle) -> None:
    assert list((h.state_dir / "xl" / "live").rglob("*.json")) == []


def _flags(dom: Domain) -> str:
    """xl's state column: ``r-----``, ``--p---``, ``---ss-`` ..."""
    return dom.host.xl("list", dom.name).stdout.splitlines()[-1].split()[4]


def _procs(word: str, h: HostHandle) -> list[int]:
    """pids whose argv holds ``word`` (xl migrate, the receiver) and names the host's
    state dir (other tests on this machine run their own)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if word.encode() in argv and any(str(h.state_dir).encode() in a for a in argv):
                found.append(int(d.name))
    return found


def _receiver_of(h: HostHandle, mem: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        pids = _procs("workers.drivers.xlreceive", h)
        if pids and mem.exists() and mem.stat().st_size > 0:
            return pids[0]
        assert time.monotonic() < deadline, "no receiver streaming"
        time.sleep(0.05)


# ---------------------------------------------------------------- live by default


def test_live_memory_with_internal_and_external_on_qcow2_and_raw(
        cluster: Cluster, lh: HostHandle) -> None:
    dom = _mixed(cluster, lh, "lv-mix", stub=False)
    va, vb = dom.vdevs[:2]  # qcow2, raw
    client = cluster.client()
    job = ok(client, client.create(dom.name, name="l1", disks=[
        DiskChoice(vdev=va, type="internal"), DiskChoice(vdev=vb, type="external")]))
    res = job.result
    assert res is not None
    assert res["memory_strategy"] == "live" and res["memory_fallback"] is None, res
    assert res["pause_ms"] is not None and res["pause_ms"] > 0
    assert res["memory_page_records"] >= 1 and res["memory_rounds"] >= 1
    rec = client.snapshot(dom.name, "l1")
    assert rec.memory_strategy == "live" and rec.pause_ms == res["pause_ms"]
    assert rec.memory_file is not None and rec.memory_bytes == os.stat(rec.memory_file).st_size
    with open(rec.memory_file, "rb") as fh:
        assert fh.read(len(XL_MAGIC)) == XL_MAGIC
    assert stat.S_IMODE(os.stat(rec.memory_file).st_mode) == 0o600
    parsed = _parsed(rec.memory_file)
    assert parsed.counts.page_data_records == rec.memory_page_records
    assert parsed.counts.rounds == rec.memory_rounds
    assert [d.strategy for d in rec.disks] == ["qmp", "qmp"]
    assert "l1" in internal_snapshots(dom.disks[va])
    assert dom.active(vb) == rec.disks[1].overlay
    assert dom.state() == "running" and _flags(dom) == "r-----"
    listed = lh.cli("snapshot-list", dom.name, "-l", check=True).stdout
    assert "memory:      live" in listed
    # memory + external on both: live too
    job = ok(client, client.create(dom.name, name="l2", type="external"))
    assert job.result is not None and job.result["memory_strategy"] == "live"
    _holds(dom, BEFORE)
    _live_dir_clear(lh)
    no_leftovers(lh, dom, client)


def test_revert_of_a_live_snapshot_brings_back_memory_and_disks(
        cluster: Cluster, lh: HostHandle) -> None:
    dom = cluster.create_domain(lh.name, unique_name("lv-rev"), raw_disk=True)
    cluster.wait_inventory(dom)
    vb = dom.vdevs[1]  # the raw disk (the guest's counter is on the first)
    wait_for_tick(dom.console, 3, timeout=180)
    write_state(dom, vb, {1: 0x11})
    client = cluster.client()
    before = read_ticks(dom.console)[-1][0]
    job = ok(client, client.create(dom.name, name="r1", type="external"))
    after = read_ticks(dom.console)[-1][0]
    assert job.result is not None and job.result["memory_strategy"] == "live"
    wait_for_tick(dom.console, after + 3, timeout=120)
    write_state(dom, vb, {1: 0x22})
    last = read_ticks(dom.console)[-1][0]
    ok(client, client.revert(dom.name, "r1"))
    assert dom.state() == "running"
    deadline = time.monotonic() + 120
    while True:  # the first tick after the revert: where the counter went back
        ns = [n for n, _ in read_ticks(dom.console)]
        drops = [b for a, b in zip(ns, ns[1:], strict=False) if b <= a]
        if drops:
            first = drops[0]
            break
        assert time.monotonic() < deadline, f"no tick after the revert (last {ns[-3:]})"
        time.sleep(0.2)
    assert first <= last
    # the guest counts on from the moment of the suspend, within the create's span
    assert before <= first - 1 <= after + 1, (before, first, after)
    assert count_boots(dom.console) == 1  # no reboot: its memory came back
    assert_state(dom.active(vb), {1: 0x11}, "the raw disk after the revert")


# ---------------------------------------------------------------- save, and why


def test_the_setting_and_a_hypervisor_without_log_dirty_give_save(
        cluster: Cluster, lh: HostHandle) -> None:
    dom = _mixed(cluster, lh, "lv-save", stub=False)
    client = cluster.client()
    try:
        _restart_with(cluster, lh, DOMSNAP_XL_MEMORY_STRATEGY="save")
        job = ok(client, client.create(dom.name, name="s1", type="external"))
        res = job.result
        assert res is not None and res["memory_strategy"] == "save"
        assert "DOMSNAP_XL_MEMORY_STRATEGY" in res["memory_fallback"]
        assert res["pause_ms"] is not None and res["memory_page_records"] is None
        _restart_with(cluster, lh, XL_STANDIN_NO_PV_SHADOW="1")
        job = ok(client, client.create(dom.name, name="s2", type="external"))
        res = job.result
        assert res is not None and res["memory_strategy"] == "save"
        assert "Failed to enable logdirty" in res["memory_fallback"], res
        rec = client.snapshot(dom.name, "s2")
        assert rec.memory_fallback == res["memory_fallback"]
        assert rec.memory_file is not None
        _parsed(rec.memory_file)  # xl save's file, the same framing
    finally:
        _restart_with(cluster, lh)
    assert dom.state() == "running"
    _holds(dom, BEFORE)
    _live_dir_clear(lh)
    ok(client, client.revert(dom.name, "s2"))  # a save's file restores as before
    assert dom.state() == "running"
    _holds(dom, BEFORE)


def test_a_paused_domain_gets_save(cluster: Cluster, lh: HostHandle) -> None:
    dom = _mixed(cluster, lh, "lv-pau", stub=False)
    dom.pause()
    client = cluster.client()
    job = ok(client, client.create(dom.name, name="p1", type="external"))
    assert job.result is not None and job.result["memory_strategy"] == "save"
    assert "paused" in job.result["memory_fallback"]
    assert dom.state() == "paused"
    dom.unpause()


# ---------------------------------------------------------------- the receiver fails


def test_a_failed_transaction_in_the_receiver_leaves_the_guest_running(
        cluster: Cluster, lh: HostHandle) -> None:
    dom = _mixed(cluster, lh, "lv-clash", stub=False)
    va = dom.vdevs[0]
    qmp(dom, "blockdev-snapshot-internal-sync", {"device": f"{va}-qcow2", "name": "clash"})
    client = cluster.client()
    job = client.wait(client.create(dom.name, name="clash", disks=[
        DiskChoice(vdev=va, type="internal"), DiskChoice(vdev=dom.vdevs[1], type="external")]),
        timeout=180)
    assert job.state == "failed" and job.error is not None
    assert "live memory snapshot failed" in job.error.message
    assert "clash" in job.error.message
    assert dom.state() == "running" and _flags(dom) == "r-----"
    assert not (lh.snapshots / dom.uuid / "clash.save").exists()
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    assert client.snapshots(dom.name) == []
    _holds(dom, BEFORE)
    _live_dir_clear(lh)
    no_leftovers(lh, dom, client)


def test_a_killed_receiver_leaves_the_guest_running(cluster: Cluster, lh: HostHandle) -> None:
    dom = _mixed(cluster, lh, "lv-rkill", stub=False)
    client = cluster.client()
    try:
        _arm(cluster, lh, "xl-receive-streaming")  # the receiver kills itself mid-stream
        job = client.wait(client.create(dom.name, name="k1", type="external"), timeout=180)
    finally:
        restart_clean(cluster, lh)
    assert job.state == "failed" and job.error is not None
    assert "the receiver wrote no report" in job.error.message, job.error.message
    assert dom.state() == "running" and _flags(dom) == "r-----"
    assert not (lh.snapshots / dom.uuid / "k1.save").exists()
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    _holds(dom, BEFORE)
    no_leftovers(lh, dom, client)
    ok(client, client.create(dom.name, name="k1", type="external"))  # the next one works


def restart_clean(cluster: Cluster, h: HostHandle) -> None:
    if h.proc is not None:
        cluster.stop_worker(h.name)
    restart(cluster, h)


# ---------------------------------------------------------------- the worker, xl killed


def test_worker_killed_mid_stream_is_rolled_back(cluster: Cluster, lh: HostHandle) -> None:
    """The worker dies (SIGKILL, supervisor and pools) as xl starts sending the stream:
    xl migrate and the receiver run on (their own session); recovery waits for them,
    then undoes the half-made snapshot (the receiver's disk snapshots, its file)."""
    dom = _mixed(cluster, lh, "lv-wkill", stub=False)
    client = cluster.client()
    _arm(cluster, lh, "xl-live-streaming")
    job = client.create(dom.name, name="w1", disks=[
        DiskChoice(vdev=dom.vdevs[0], type="internal"),
        DiskChoice(vdev=dom.vdevs[1], type="external")])
    died(lh)
    deadline = time.monotonic() + 600
    while _procs("migrate", lh) or _procs("workers.drivers.xlreceive", lh):
        # they outlive the worker and end by themselves (start-up recovery would wait
        # for them too, past the test harness's 60 s for a worker to come up)
        assert time.monotonic() < deadline, "xl migrate never ended"
        time.sleep(0.2)
    restart(cluster, lh)
    rec = ended(client, job)
    assert rec.state == "failed" and rec.error is not None
    assert "rolled back" in rec.error.message
    assert dom.state() == "running" and _flags(dom) == "r-----"
    assert "w1" not in internal_snapshots(dom.disks[dom.vdevs[0]])
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    assert not (lh.snapshots / dom.uuid / "w1.save").exists()
    assert not _procs("migrate", lh) and not _procs("workers.drivers.xlreceive", lh)
    _holds(dom, BEFORE)
    _live_dir_clear(lh)  # recovery removed the dead worker's receiver request
    no_leftovers(lh, dom, client)
    ok(client, client.create(dom.name, name="w1", type="external"))


def test_xl_migrate_killed_after_the_suspend_nobody_comes(
        cluster: Cluster, lh: HostHandle) -> None:
    """The worker and ``xl migrate`` die with the guest suspended (``---ss-``); the
    receiver, held at the end of the stream, then sees xl gone and takes no disk
    snapshot; the host's guard resumes the domain; recovery rolls the create back."""
    dom = _mixed(cluster, lh, "lv-xkill", stub=False)
    client = cluster.client()
    _arm(cluster, lh, "xl-receive-fsynced:hold", budget="3")
    job = client.create(dom.name, name="x1", type="external")
    mem = lh.snapshots / dom.uuid / "x1.save"
    release = lh.state_dir / "release-xl-receive-fsynced"
    try:
        _receiver_of(lh, mem)
        deadline = time.monotonic() + 180
        while True:  # the whole stream is in: the guest is suspended
            try:
                if _parsed(str(mem)).done:
                    break
            except ValueError:
                pass
            assert time.monotonic() < deadline, "the stream never ended"
            time.sleep(0.1)
        assert _flags(dom) == "---ss-"
        assert lh.proc is not None
        os.killpg(lh.proc.pid, signal.SIGKILL)
        died(lh)
        migrates = _procs("migrate", lh)  # the rune names the request under the state dir
        assert migrates, "no xl migrate"
        for pid in migrates:
            os.kill(pid, signal.SIGKILL)
    finally:
        release.touch()
    deadline = time.monotonic() + 60
    while _flags(dom) != "r-----":  # the guard, alone, resumes it after its budget
        assert time.monotonic() < deadline, f"{dom.name} is {_flags(dom)}"
        time.sleep(0.2)
    guard_log = lh.state_dir / "guard.log"
    while not guard_log.exists() or "budget-expired" not in guard_log.read_text():
        assert time.monotonic() < deadline, "the guard recorded nothing"
        time.sleep(0.2)
    restart(cluster, lh)
    rec = ended(client, job)
    assert rec.state == "failed"
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    assert not mem.exists()
    _holds(dom, BEFORE)
    release.unlink()
    _live_dir_clear(lh)  # recovery removed the dead worker's receiver request
    no_leftovers(lh, dom, client)
    ok(client, client.create(dom.name, name="x1", type="external"))
