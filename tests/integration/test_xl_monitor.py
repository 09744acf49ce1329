"""After domsnap suspended a domain, its shutdowns are still acted on (issue 8).

``xl create``'s monitor exits at the first suspend ("Domain has suspended."), so after a
memory snapshot (``xl migrate`` on the live path, ``xl save -p`` otherwise) nobody would
act on the config's ``on_reboot`` etc.: on
Xen 4.17 ``xl reboot`` then left the domain ``---sr-`` for good. The stand-in xl behaves
so (tests/xlstandin/hypervisor.py, monitor.py); domsnap's guard takes over
(workers/drivers/xlmonitor.py). Each test drives a shutdown (``xl reboot``, the guest's
own reboot, ``xl shutdown``) and checks what the host's toolstack shows, the images
(writes land in the active ones, frozen ones keep their hashes), the guard's log and the
audit log. A domain whose monitor still runs (no suspend, or restored by a save/restore
window's ``xl restore``) is left to xl's monitor: restarted exactly once, never by domsnap.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster, Domain, unique_name
from tests.integration.cluster import succeeded as _ok
from tests.integration.diskdata import assert_state, qmp, write_state
from tests.integration.test_xl_reboot import _domid, _frozen, _rebuilt, _served, _sha
from tests.vm.guest import count_boots, read_disk_counter, wait_for_tick

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def _dom(cluster: Cluster, x1: str, prefix: str, **kw: object) -> Domain:
    dom = cluster.create_domain(x1, unique_name(prefix), **kw)  # type: ignore[arg-type]
    cluster.wait_inventory(dom)
    return dom


def _flags(dom: Domain) -> str | None:
    """The domain's state column in ``xl list`` (None when xl has no such domain)."""
    proc = dom.host.xl("list", dom.name, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.splitlines()[-1].split()[4]


def _events(dom: Domain) -> list[dict[str, Any]]:
    """The guard's on-shutdown actions on this domain."""
    try:
        lines = (dom.host.state_dir / "guard.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    found = [json.loads(line) for line in lines if line.strip()]
    return [e for e in found if e.get("event") == "on-shutdown" and e.get("domain") == dom.uuid]


def _audited(dom: Domain) -> list[dict[str, Any]]:
    lines = (dom.host.state_dir / "audit.jsonl").read_text().splitlines()
    found = [json.loads(line) for line in lines if line.strip()]
    return [e for e in found if e.get("op") == "domain-on-shutdown"
            and e.get("domain") == dom.uuid]


def _no_monitor_mark(dom: Domain) -> bool:
    return not (dom.host.state_dir / "xl" / "nomonitor" / f"{dom.uuid}.json").exists()


def _wait(what: str, cond: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _monitor_reboots(dom: Domain) -> int:
    """How often xl's own monitor (the stand-in's daemon) rebuilt the domain."""
    try:
        text = (dom.host.xen / "log" / f"xl-{dom.name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return text.count("Done. Rebooting now")


def test_xl_reboot_after_a_memory_snapshot_restarts_on_the_active_images(
        cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xm-mem", guest=False)
    client = cluster.client()
    for vdev in dom.vdevs:
        write_state(dom, vdev, {1: 0x11})
    job = _ok(client, client.create(dom.name, name="m1", type="external"))
    assert job.result is not None and job.result["memory_strategy"] == "live"  # xl migrate
    assert not _no_monitor_mark(dom)  # domsnap knows the monitor is gone
    for vdev in dom.vdevs:
        write_state(dom, vdev, {2: 0x22})
    frozen = _frozen(dom)
    assert frozen
    active = {v: dom.active(v) for v in dom.vdevs}
    old = _domid(dom)
    assert old is not None
    reboots = _monitor_reboots(dom)
    dom.host.xl("reboot", dom.name)
    new = _rebuilt(dom, old, timeout=60)  # by domsnap's guard: xl's monitor is gone
    _wait("the guard recorded no action", lambda: bool(_events(dom)), 30)
    assert _monitor_reboots(dom) == reboots
    events = _events(dom)
    assert [(e["reason"], e["action"], e["outcome"], e["domid"], e["new_domid"])
            for e in events] == [("reboot", "restart", "succeeded", old, new)]
    assert events[0]["flags"] == "---sr-"
    assert [(a["outcome"], a["who"], a["details"]["action"]) for a in _audited(dom)] == [
        ("succeeded", "domsnap-guard", "restart")]
    assert _no_monitor_mark(dom)  # the new instance has its own monitor
    assert _served(dom) == active
    for vdev in dom.vdevs:
        write_state(dom, vdev, {3: 0x33})
        assert_state(active[vdev], {1: 0x11, 2: 0x22, 3: 0x33}, f"{vdev} after the reboot")
    assert _frozen(dom) == frozen
    # the restarted instance has a real monitor: the next reboot is xl's, not domsnap's
    dom.host.xl("reboot", dom.name)
    _rebuilt(dom, new, timeout=60)
    _wait("xl's monitor did not rebuild it", lambda: _monitor_reboots(dom) == reboots + 1)
    time.sleep(3)  # a few guard rounds
    assert len(_events(dom)) == 1
    assert _served(dom) == active
    # the test hosts' heartbeat TTL is 4 s: on a loaded machine the inventory can lapse
    # while two rebuilds settle; the create needs a live host, not a fast one
    _wait("the host's heartbeat did not come back", lambda: client.store.host_alive(x1), 60)
    _ok(client, client.create(dom.name, name="m2"))  # domsnap carries on with it


def test_guest_reboot_after_a_memory_snapshot_comes_back(cluster: Cluster, x1: str) -> None:
    """A real guest reboots itself after a memory snapshot: it boots again, its counter
    goes on in the overlay, the snapshot's image keeps what it had."""
    dom = _dom(cluster, x1, "xm-guest", disks=1)
    client = cluster.client()
    vdev = dom.vdevs[0]
    _ok(client, client.create(dom.name, name="g1", type="external"))
    overlay, base = dom.active(vdev), str(dom.disks[vdev])
    wait_for_tick(dom.console, 2, timeout=60)
    frozen = _frozen(dom)
    at_snapshot = read_disk_counter(Path(base))
    boots = count_boots(dom.console)
    old = _domid(dom)
    assert old is not None
    qmp(dom, "send-key", {"keys": [{"type": "qcode", "data": k}
                                   for k in ("ctrl", "alt", "delete")]})
    _rebuilt(dom, old, timeout=120)
    _wait("the guard recorded no action", lambda: bool(_events(dom)), 30)
    assert [(e["reason"], e["action"]) for e in _events(dom)] == [("reboot", "restart")]
    _wait("the guest did not boot again", lambda: count_boots(dom.console) > boots, 180)
    wait_for_tick(dom.console, 2, timeout=180)
    assert _served(dom) == {vdev: overlay}
    counter = read_disk_counter(Path(overlay))
    assert counter is not None and counter >= 1
    assert read_disk_counter(Path(base)) == at_snapshot
    assert _frozen(dom) == frozen


def test_on_reboot_destroy_is_honoured(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xm-rdes", guest=False, extra_cfg=['on_reboot = "destroy"'])
    client = cluster.client()
    _ok(client, client.create(dom.name, name="m1"))
    old = _domid(dom)
    dom.host.xl("reboot", dom.name)
    _wait("the domain was not destroyed", lambda: _flags(dom) is None)
    _wait("the guard recorded no action", lambda: bool(_events(dom)), 30)
    assert [(e["reason"], e["configured"], e["action"], e["domid"]) for e in _events(dom)] \
        == [("reboot", "destroy", "destroy", old)]
    assert _no_monitor_mark(dom)
    assert dom.state() == "shutoff"
    time.sleep(2)
    assert _flags(dom) is None  # nobody started it again


def test_poweroff_after_a_memory_snapshot_destroys_by_default(
        cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xm-poff", guest=False)
    client = cluster.client()
    dom.pause()  # a paused domain's memory snapshot takes the `xl save -p` path
    job = _ok(client, client.create(dom.name, name="m1"))
    assert job.result is not None and job.result["memory_strategy"] == "save"
    assert not _no_monitor_mark(dom)  # that path loses xl's monitor too
    dom.unpause()
    old = _domid(dom)
    dom.host.xl("shutdown", dom.name)
    _wait("the domain was not destroyed", lambda: _flags(dom) is None)
    _wait("the guard recorded no action", lambda: bool(_events(dom)), 30)
    assert [(e["reason"], e["configured"], e["action"], e["flags"], e["domid"])
            for e in _events(dom)] == [("poweroff", "destroy", "destroy", "---s--", old)]


def test_on_poweroff_preserve_leaves_it_shut_down(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xm-pres", guest=False, extra_cfg=['on_poweroff = "preserve"'])
    client = cluster.client()
    _ok(client, client.create(dom.name, name="m1"))
    dom.host.xl("shutdown", dom.name)
    _wait("no preserve was recorded", lambda: bool(_events(dom)))
    time.sleep(3)  # more guard rounds: reported once, never acted on
    assert [(e["action"], e["outcome"]) for e in _events(dom)] == [("preserve", "succeeded")]
    assert _flags(dom) == "---s--"  # as Xen shows it, until somebody destroys it
    dom.host.xl("destroy", dom.name)
    _wait("the record of the gone instance stayed", lambda: _no_monitor_mark(dom), 30)


def test_a_domain_whose_monitor_runs_is_left_to_xl(cluster: Cluster, x1: str) -> None:
    """A disk-only snapshot pauses (no suspend): the monitor runs, xl restarts the domain
    once, domsnap never touches it."""
    dom = _dom(cluster, x1, "xm-alive", guest=False)
    client = cluster.client()
    _ok(client, client.create(dom.name, name="d1", type="external", disk_only=True))
    assert _no_monitor_mark(dom)
    active = {v: dom.active(v) for v in dom.vdevs}
    old = _domid(dom)
    assert old is not None
    dom.host.xl("reboot", dom.name)
    new = _rebuilt(dom, old)
    _wait("xl's monitor did not rebuild it", lambda: _monitor_reboots(dom) == 1)
    time.sleep(3)
    assert _domid(dom) == new and _monitor_reboots(dom) == 1  # exactly once
    assert _events(dom) == []
    assert _served(dom) == active


def test_reboot_after_a_save_restore_window(cluster: Cluster, x1: str) -> None:
    """A stub-domain device model: the disk-only snapshot goes through ``xl save`` and
    ``xl restore`` (which spawns a new monitor); a guest reboot after it is xl's monitor's
    to handle, exactly once, on the overlay."""
    dom = _dom(cluster, x1, "xm-win", disks=1,
               extra_cfg=["device_model_stubdomain_override = 1"])
    client = cluster.client()
    vdev = dom.vdevs[0]
    job = _ok(client, client.create(dom.name, name="w1", type="external", disk_only=True))
    assert job.result is not None
    assert {d["strategy"] for d in job.result["disks"]} == {"save-restore"}
    assert _no_monitor_mark(dom)  # the xl restore brought a monitor back
    overlay, base = dom.active(vdev), str(dom.disks[vdev])
    base_sha = _sha(base)
    wait_for_tick(dom.console, 2, timeout=60)
    old = _domid(dom)
    assert old is not None
    boots = count_boots(dom.console)
    dom.host.xl("reboot", dom.name)
    _rebuilt(dom, old, timeout=120)
    _wait("the guest did not boot again", lambda: count_boots(dom.console) > boots, 180)
    wait_for_tick(dom.console, 2, timeout=180)
    time.sleep(2)
    assert _monitor_reboots(dom) == 1 and _events(dom) == []
    long = json.loads(dom.host.xl("list", "-l", dom.name).stdout)
    assert [d["pdev_path"] for d in long[0]["config"]["disks"]] == [overlay]
    counter = read_disk_counter(Path(overlay))
    assert counter is not None and counter >= 1
    assert _sha(base) == base_sha


def test_a_save_the_guest_never_suspended_for_keeps_xls_monitor(
        cluster: Cluster, x1: str) -> None:
    """A guest that does not answer the suspend request: the save fails before any
    suspend, the monitor still runs, so domsnap keeps no record and leaves the next
    reboot to xl."""
    dom = _dom(cluster, x1, "xm-nosus", guest=False)
    marker = dom.host.xen / "domains" / dom.uuid / "no-suspend"
    marker.touch()
    client = cluster.client()
    job = client.wait(client.create(dom.name, name="n1"), timeout=180)
    assert job.state == "failed"
    assert job.error is not None and "did not suspend" in job.error.message
    assert _no_monitor_mark(dom)
    old = _domid(dom)
    assert old is not None
    dom.host.xl("reboot", dom.name)
    _rebuilt(dom, old)
    _wait("xl's monitor did not rebuild it", lambda: _monitor_reboots(dom) == 1)
    time.sleep(3)
    assert _events(dom) == [] and _monitor_reboots(dom) == 1
