"""Revert through the queue on real QEMU domains: the domain comes back in exactly
the snapshot's state (memory, disks, run state), for internal, external and
disk-only snapshots, and the current pointer follows."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.integration.cluster import Cluster, Domain
from tests.integration.cluster import listed_domain as _domain
from tests.integration.cluster import succeeded as _ok
from tests.integration.diskdata import (
    assert_state,
    backing_of,
    qmp_status,
    write_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]






def _write(dom: Domain, state: dict[str, dict[int, int]]) -> None:
    for vdev, slots in state.items():
        write_state(dom, vdev, slots)


def _check(dom: Domain, state: dict[str, dict[int, int]], what: str) -> None:
    for vdev, slots in state.items():
        assert_state(dom.active(vdev), slots, f"{what}: {dom.name} {vdev}")


def _assert_running(dom: Domain) -> None:
    assert dom.pid() is not None, f"{dom.name}: no QEMU process"
    assert qmp_status(dom) == "running"


def _merge(*states: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    for st in states:
        for vdev, slots in st.items():
            out.setdefault(vdev, {}).update(slots)
    return out


# Slot 0 is overwritten by every step; slot i+1 is written only by step i.
def _step(dom: Domain, i: int, pattern: int) -> dict[str, dict[int, int]]:
    va, vb = dom.vdevs[:2]
    return {va: {0: pattern, i + 1: pattern}, vb: {0: pattern ^ 0xFF, i + 1: pattern ^ 0xFF}}


def _untouched(dom: Domain, *slots: int) -> dict[str, dict[int, int]]:
    return {v: dict.fromkeys(slots, 0) for v in dom.vdevs}


def test_internal_memory_revert_runs_with_snapshot_data(cluster: Cluster, hv_host: str) -> None:
    dom = _domain(cluster, hv_host, "rv-int")
    client = cluster.client()
    a, b = _step(dom, 0, 0x11), _step(dom, 1, 0x22)
    _write(dom, a)
    _ok(client, client.create(dom.name, name="s1"))
    _write(dom, b)
    _check(dom, _merge(a, b), "before revert")

    job = _ok(client, client.revert(dom.name, "s1"))
    assert job.result is not None and job.result["state"] == "running", job.result
    _assert_running(dom)
    assert dom.state() == "running"
    _check(dom, _merge(a, _untouched(dom, 2)), "after revert to s1")
    # internal snapshots are applied in place: the same images, the snapshot still there
    assert {v: dom.active(v) for v in dom.vdevs} == {v: str(p) for v, p in dom.disks.items()}
    assert [s.name for s in client.snapshots(dom.name)] == ["s1"]

    # --paused: back at s1 again, but left paused; unpausing then works
    _write(dom, b)
    job = _ok(client, client.revert(dom.name, "s1", start="paused"))
    assert job.result is not None and job.result["state"] == "paused", job.result
    assert dom.pid() is not None
    status = qmp_status(dom)
    assert status != "running" and status in ("paused", "postmigrate", "prelaunch"), status
    assert dom.state() == "paused"
    _check(dom, _merge(a, _untouched(dom, 2)), "after paused revert to s1")
    dom.unpause()
    _assert_running(dom)
    assert dom.state() == "running"
    # and it is a working domain: it takes writes again
    _write(dom, b)
    _check(dom, _merge(a, b), "after unpause")


def test_external_revert_makes_new_overlay_and_keeps_later_snapshots(
        cluster: Cluster, hv_host: str) -> None:
    dom = _domain(cluster, hv_host, "rv-ext")
    client = cluster.client()
    a, b, c = _step(dom, 0, 0x33), _step(dom, 1, 0x44), _step(dom, 2, 0x55)
    _write(dom, a)
    _ok(client, client.create(dom.name, name="e1", type="external"))
    _write(dom, b)
    _ok(client, client.create(dom.name, name="e2", type="external"))
    _write(dom, c)
    e1, e2 = client.snapshot(dom.name, "e1"), client.snapshot(dom.name, "e2")
    at_e1, at_e2 = _merge(a, _untouched(dom, 2, 3)), _merge(a, b, _untouched(dom, 3))
    for rec in (e1, e2):
        assert [d.vdev for d in rec.disks] == list(dom.vdevs)
        for d in rec.disks:
            assert d.type == "external" and d.overlay and os.path.exists(d.overlay)
            assert os.path.exists(d.file)
    # e1 froze the original images; e2 froze e1's overlays
    assert {d.vdev: d.file for d in e1.disks} == {v: str(p) for v, p in dom.disks.items()}
    assert {d.vdev: d.file for d in e2.disks} == {d.vdev: d.overlay for d in e1.disks}
    e2_files = {p for d in e2.disks for p in (d.file, d.overlay)}

    job = _ok(client, client.revert(dom.name, "e1"))
    assert job.result is not None and job.result["state"] == "running", job.result
    _assert_running(dom)
    for d in e1.disks:
        active = dom.active(d.vdev)
        assert active not in (d.file, d.overlay), f"{d.vdev}: revert reused {active}"
        assert os.path.exists(active)
        assert backing_of(active) == d.file, f"{d.vdev}: {active} not on {d.file}"
    _check(dom, at_e1, "after revert to e1")
    # the later snapshot is intact: its files are still there with their content
    for p in e2_files:
        assert p is not None and os.path.exists(p), f"{p} of e2 vanished"
    for d in e2.disks:
        assert_state(d.file, at_e2[d.vdev], f"e2's frozen image of {d.vdev}")

    job = _ok(client, client.revert(dom.name, "e2"))
    assert job.result is not None and job.result["state"] == "running", job.result
    _assert_running(dom)
    for d in e2.disks:
        assert backing_of(dom.active(d.vdev)) == d.file
    _check(dom, at_e2, "after revert to e2")
    for d in e1.disks:
        assert_state(d.file, at_e1[d.vdev], f"e1's frozen image of {d.vdev}")
    assert {s.name for s in client.snapshots(dom.name)} == {"e1", "e2"}


def test_disk_only_revert_leaves_domain_shut_off_then_start_running(
        cluster: Cluster, hv_host: str) -> None:
    dom = _domain(cluster, hv_host, "rv-disk")
    client = cluster.client()
    a, b = _step(dom, 0, 0x66), _step(dom, 1, 0x77)
    _write(dom, a)
    _ok(client, client.create(dom.name, name="d1", disk_only=True))
    rec = client.snapshot(dom.name, "d1")
    assert rec.disk_only and rec.memory_file is None
    _write(dom, b)

    job = _ok(client, client.revert(dom.name, "d1"))
    assert job.result is not None and job.result["state"] == "shutoff", job.result
    assert dom.pid() is None, "a disk-only revert must leave the domain shut off"
    assert dom.state() == "shutoff"
    _check(dom, _merge(a, _untouched(dom, 2)), "after disk-only revert")

    job = _ok(client, client.revert(dom.name, "d1", start="running"))
    assert job.result is not None and job.result["state"] == "running", job.result
    _assert_running(dom)
    assert dom.state() == "running"
    _check(dom, _merge(a, _untouched(dom, 2)), "after disk-only revert with start=running")
    _write(dom, b)
    _check(dom, _merge(a, b), "writes after the restart")


def test_current_pointer_follows_creates_and_reverts(cluster: Cluster, hv_host: str) -> None:
    dom = _domain(cluster, hv_host, "rv-cur")
    client = cluster.client()
    assert client.current(dom.name) is None
    _ok(client, client.create(dom.name, name="c1"))
    assert client.current(dom.name) == "c1"
    _ok(client, client.create(dom.name, name="c2"))
    assert client.current(dom.name) == "c2"
    assert client.snapshot(dom.name, "c2").parent == "c1"

    _ok(client, client.revert(dom.name, "c1"))
    assert client.current(dom.name) == "c1"
    _ok(client, client.create(dom.name, name="c3"))
    assert client.current(dom.name) == "c3"
    parents: dict[str, Any] = {s.name: s.parent for s in client.snapshots(dom.name)}
    assert parents == {"c1": None, "c2": "c1", "c3": "c1"}, parents
    # the sidecar records agree with Redis
    for name, parent in parents.items():
        side = json.loads((dom.host.snapshots / dom.uuid / f"{name}.json").read_text())
        assert side["parent"] == parent, (name, side["parent"])

    _ok(client, client.revert(dom.name, "c2"))
    assert client.current(dom.name) == "c2"
    _ok(client, client.create(dom.name, name="c4", disk_only=True))
    assert client.snapshot(dom.name, "c4").parent == "c2"
    assert client.current(dom.name) == "c4"
