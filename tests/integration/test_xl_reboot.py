"""A reboot on a dom0 rebuilds the domain on the images domsnap made active, never on a
snapshot's frozen ones (issue 9, seen on Xen 4.17: after an external snapshot a reboot
came back on the old image and the guest wrote into the snapshot).

The stand-in xl behaves as xl does here: the monitor that ``xl create``/``xl restore``
leave rebuilds a rebooted domain from its stored config (``xl config-update``'s once,
else the libxl-json one, which still names the images the domain was built on). Each
test reboots after an operation (``xl reboot``, or the guest itself), then writes
through the rebuilt device model and checks the disk contents: the writes land in the
active image, every frozen image is byte for byte what it was, and domsnap carries on
with the domain."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from tests.integration.cluster import Cluster, Domain, unique_name
from tests.integration.cluster import succeeded as _ok
from tests.integration.diskdata import assert_state, backing_chain, qmp, write_state
from tests.vm.guest import count_boots, read_disk_counter, wait_for_tick

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def _dom(cluster: Cluster, x1: str, prefix: str, **kw: object) -> Domain:
    dom = cluster.create_domain(x1, unique_name(prefix), **kw)  # type: ignore[arg-type]
    cluster.wait_inventory(dom)
    return dom


def _domid(dom: Domain) -> int | None:
    proc = dom.host.xl("list", "-l", dom.name, check=False)
    if proc.returncode != 0:
        return None
    return int(json.loads(proc.stdout)[0]["domid"])


def _rebuilt(dom: Domain, old: int, timeout: float = 60) -> int:
    """Wait until xl's monitor has rebuilt the domain (a new domid, running)."""
    deadline = time.monotonic() + timeout
    while True:
        new = _domid(dom)
        if new is not None and new != old and dom.state() == "running":
            return new
        assert time.monotonic() < deadline, f"{dom.name} was not rebuilt after its reboot"
        time.sleep(0.1)


def _served(dom: Domain) -> dict[str, str]:
    """vdev -> the image the device model writes to (its format node's file)."""
    nodes = {n["node-name"]: n["file"] for n in qmp(dom, "query-named-block-nodes")}
    out = {}
    for vdev in dom.vdevs:
        out[vdev] = next(f for name, f in nodes.items() if name.startswith(f"{vdev}-"))
    return out


def _sha(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _frozen(dom: Domain) -> dict[str, str]:
    """Every image below the active one of each disk, with its hash."""
    return {p: _sha(p) for v in dom.vdevs for p in backing_chain(dom.active(v))[1:]}


def _reboot_and_check(cluster: Cluster, dom: Domain, after: dict[int, int]) -> None:
    """``xl reboot``; then the rebuilt domain runs on domsnap's active images, a write
    lands there, the frozen images did not change, domsnap adopted the new instance
    without a word about another view, and a snapshot of it works."""
    frozen = _frozen(dom)
    assert frozen, "the test needs a snapshot with frozen images"
    active = {v: dom.active(v) for v in dom.vdevs}
    old = _domid(dom)
    assert old is not None
    dom.host.xl("reboot", "-w", dom.name)
    _rebuilt(dom, old)
    assert _served(dom) == active
    for vdev in dom.vdevs:
        write_state(dom, vdev, {7: 0x77})
    for vdev in dom.vdevs:
        assert_state(active[vdev], {**after, 7: 0x77}, f"{vdev} after the reboot")
    assert _frozen(dom) == frozen  # no byte of any snapshot changed
    client = cluster.client()
    _ok(client, client.create(dom.name, name="after-reboot", type="external",
                              disk_only=True))
    assert dom.host.log is not None
    log = dom.host.log.read_text(errors="replace")
    assert f"{dom.uuid}) was started from a stale config" not in log
    assert f"({dom.uuid}) was started from a config naming other images" not in log


def test_reboot_after_an_external_snapshot(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xr-ext", guest=False)
    client = cluster.client()
    for vdev in dom.vdevs:
        write_state(dom, vdev, {1: 0x11})
    _ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    for vdev in dom.vdevs:
        write_state(dom, vdev, {2: 0x22})
    _reboot_and_check(cluster, dom, {1: 0x11, 2: 0x22})


def test_reboot_after_a_revert(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xr-rev", guest=False)
    client = cluster.client()
    for vdev in dom.vdevs:
        write_state(dom, vdev, {1: 0x11})
    _ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    for vdev in dom.vdevs:
        write_state(dom, vdev, {1: 0x33, 2: 0x22})
    _ok(client, client.revert(dom.name, "e1", "running"))
    assert dom.state() == "running"
    _reboot_and_check(cluster, dom, {1: 0x11})


def test_reboot_after_a_delete_that_merged(cluster: Cluster, x1: str) -> None:
    dom = _dom(cluster, x1, "xr-del", guest=False)
    client = cluster.client()
    for vdev in dom.vdevs:
        write_state(dom, vdev, {1: 0x11})
    _ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    for vdev in dom.vdevs:
        write_state(dom, vdev, {2: 0x22})
    _ok(client, client.create(dom.name, name="e2", type="external", disk_only=True))
    for vdev in dom.vdevs:
        write_state(dom, vdev, {3: 0x33})
    before = {v: dom.active(v) for v in dom.vdevs}
    _ok(client, client.delete(dom.name, "e2"))  # e2's overlay is merged live
    assert {v: dom.active(v) for v in dom.vdevs} != before
    _reboot_and_check(cluster, dom, {1: 0x11, 2: 0x22, 3: 0x33})


def test_guest_initiated_reboot_after_an_external_snapshot(cluster: Cluster, x1: str) -> None:
    """A real guest reboots itself (Ctrl-Alt-Del: the kernel restarts at once): it comes
    back on the overlay, its counter goes on in the overlay, the snapshot's image keeps
    the counter it had when the snapshot was taken."""
    dom = _dom(cluster, x1, "xr-guest", disks=1)
    client = cluster.client()
    vdev = dom.vdevs[0]
    _ok(client, client.create(dom.name, name="g1", type="external", disk_only=True))
    overlay, base = dom.active(vdev), str(dom.disks[vdev])
    wait_for_tick(dom.console, 2, timeout=60)  # ticks after the snapshot: in the overlay
    frozen = _frozen(dom)
    at_snapshot = read_disk_counter(base)
    boots = count_boots(dom.console)
    old = _domid(dom)
    assert old is not None
    qmp(dom, "send-key", {"keys": [{"type": "qcode", "data": k}
                                   for k in ("ctrl", "alt", "delete")]})
    _rebuilt(dom, old, timeout=120)
    deadline = time.monotonic() + 180
    while count_boots(dom.console) <= boots:
        assert time.monotonic() < deadline, "the guest did not boot again"
        time.sleep(0.2)
    wait_for_tick(dom.console, 2, timeout=180)  # n restarts at 1 after a boot
    assert _served(dom) == {vdev: overlay}
    counter = read_disk_counter(overlay)
    assert counter is not None and counter >= 1
    assert read_disk_counter(base) == at_snapshot
    assert _frozen(dom) == frozen
