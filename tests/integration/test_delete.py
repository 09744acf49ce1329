"""Delete through the queue on real QEMU domains: everything of the snapshot goes
(internal snapshot in the qcow2, memory image, sidecar, Redis record), external
chains are merged so no other snapshot and no current data is lost, and a branch
point is refused without touching anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from domsnap.client import Client
from domsnap.errors import UnknownSnapshot
from schemas.models import SnapshotRecord
from tests.integration.cluster import Cluster, Domain
from tests.integration.cluster import listed_domain as _domain
from tests.integration.cluster import succeeded as _ok
from tests.integration.diskdata import (
    assert_state,
    backing_chain,
    files_under,
    internal_snapshots,
    write_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]

State = dict[str, dict[int, int]]





def _write(dom: Domain, state: State) -> None:
    for vdev, slots in state.items():
        write_state(dom, vdev, slots)


def _merge(*states: State) -> State:
    out: State = {}
    for st in states:
        for vdev, slots in st.items():
            out.setdefault(vdev, {}).update(slots)
    return out


def _step(dom: Domain, i: int, pattern: int) -> State:
    """Step i overwrites slot 0 and writes its own slot i+1."""
    va, vb = dom.vdevs[:2]
    return {va: {0: pattern, i + 1: pattern}, vb: {0: pattern ^ 0xFF, i + 1: pattern ^ 0xFF}}


def _untouched(dom: Domain, *slots: int) -> State:
    return {v: dict.fromkeys(slots, 0) for v in dom.vdevs}


def _check_active(dom: Domain, state: State, what: str) -> None:
    for vdev, slots in state.items():
        assert_state(dom.active(vdev), slots, f"{what}: {dom.name} {vdev} (active)")


def _check_frozen(rec: SnapshotRecord, state: State, what: str) -> None:
    """The snapshot's frozen images (external) hold exactly ``state``."""
    for d in rec.disks:
        assert_state(d.file, state[d.vdev], f"{what}: {rec.name} {d.vdev} frozen {d.file}")


def _snapdir(dom: Domain) -> Path:
    return dom.host.snapshots / dom.uuid


def _sidecar(dom: Domain, name: str) -> Path:
    return _snapdir(dom) / f"{name}.json"


def _redis_has(client: Client, dom: Domain, name: str) -> bool:
    try:
        client.store.get_snapshot(dom.uuid, name)
    except UnknownSnapshot:
        return False
    return True


def _assert_gone(client: Client, dom: Domain, rec: SnapshotRecord) -> None:
    assert not _redis_has(client, dom, rec.name), f"{rec.name} still in Redis"
    _assert_sidecars_agree(client, dom)
    assert rec.name not in {s.name for s in client.snapshots(dom.name)}
    assert not _sidecar(dom, rec.name).exists(), f"sidecar of {rec.name} left behind"
    if rec.memory_file:
        assert not os.path.exists(rec.memory_file), f"memory image {rec.memory_file} left behind"


def _assert_sidecars_agree(client: Client, dom: Domain) -> None:
    """Redis and the host's sidecar records say the same (each can rebuild the other)."""
    in_redis = {s.name: s.model_dump(mode="json") for s in client.snapshots(dom.name)}
    on_disk = {p.stem: SnapshotRecord.model_validate_json(p.read_text()).model_dump(mode="json")
               for p in _snapdir(dom).glob("*.json")}
    assert on_disk == in_redis


def _needed_files(client: Client, dom: Domain) -> set[str]:
    """What the domain and its remaining snapshots need: active chains, every image of
    every record (and the chain below each), memory images, sidecars."""
    need: set[str] = set()
    for v in dom.vdevs:
        need.update(backing_chain(dom.active(v)))
    for rec in client.snapshots(dom.name):
        need.add(str(_sidecar(dom, rec.name)))
        if rec.memory_file:
            need.add(rec.memory_file)
        for d in rec.disks:
            need.update(backing_chain(d.file))
            if d.overlay:
                need.add(d.overlay)
    return need


def _assert_no_leftovers(client: Client, dom: Domain, what: str) -> None:
    extra = files_under(_snapdir(dom)) - _needed_files(client, dom)
    assert not extra, f"{what}: files nothing needs under {_snapdir(dom)}: {sorted(extra)}"


def _parents(client: Client, dom: Domain) -> dict[str, str | None]:
    return {s.name: s.parent for s in client.snapshots(dom.name)}


# ---------------------------------------------------------------- internal


@pytest.mark.parametrize("live", [True, False], ids=["live", "offline"])
def test_delete_internal(cluster: Cluster, hv_host: str, live: bool) -> None:
    dom = _domain(cluster, hv_host, "dl-int")
    client = cluster.client()
    a = _step(dom, 0, 0x11)
    _write(dom, a)
    _ok(client, client.create(dom.name, name="keep"))
    _ok(client, client.create(dom.name, name="gone"))
    gone = client.snapshot(dom.name, "gone")
    assert gone.memory_file and os.path.exists(gone.memory_file)
    assert _sidecar(dom, "gone").exists()
    for v in dom.vdevs:
        assert internal_snapshots(dom.active(v)) == ["keep", "gone"]
    if not live:
        dom.destroy()
        assert dom.pid() is None and dom.state() == "shutoff"

    _ok(client, client.delete(dom.name, "gone"))
    _assert_gone(client, dom, gone)
    for v in dom.vdevs:
        assert internal_snapshots(dom.active(v)) == ["keep"], v
    assert client.current(dom.name) == "keep"
    assert (dom.pid() is not None) == live
    assert dom.state() == ("running" if live else "shutoff")
    # the other snapshot is whole: it still reverts
    keep = client.snapshot(dom.name, "keep")
    assert keep.memory_file and os.path.exists(keep.memory_file)
    _ok(client, client.revert(dom.name, "keep"))
    assert dom.pid() is not None
    _check_active(dom, a, "after revert to keep")

    _ok(client, client.delete(dom.name, "keep"))
    _assert_gone(client, dom, keep)
    for v in dom.vdevs:
        assert internal_snapshots(dom.active(v)) == []
    assert client.current(dom.name) is None
    assert files_under(_snapdir(dom)) == set()


# ---------------------------------------------------------------- external, linear


def _linear_chain(client: Client, dom: Domain) -> tuple[list[State], State]:
    """A, S1, B, S2, C, S3, D (disk-only, external). Returns the states at S1..S3, and now."""
    steps = [_step(dom, i, p) for i, p in enumerate((0x22, 0x33, 0x44, 0x55))]
    states = []
    for i in range(3):
        _write(dom, steps[i])
        _ok(client, client.create(dom.name, name=f"S{i + 1}", disk_only=True, type="external"))
        states.append(_merge(*steps[: i + 1], _untouched(dom, *range(i + 2, 5))))
    _write(dom, steps[3])
    return states, _merge(*steps)


@pytest.mark.parametrize("live", [True, False], ids=["live", "offline"])
def test_delete_linear_external_chain(cluster: Cluster, hv_host: str, live: bool) -> None:
    dom = _domain(cluster, hv_host, "dl-lin")
    client = cluster.client()
    (at1, at2, at3), now = _linear_chain(client, dom)
    s1, s2, s3 = (client.snapshot(dom.name, n) for n in ("S1", "S2", "S3"))
    originals = {v: str(p) for v, p in dom.disks.items()}
    assert {d.vdev: d.file for d in s1.disks} == originals
    assert _parents(client, dom) == {"S1": None, "S2": "S1", "S3": "S2"}
    _check_frozen(s1, at1, "before")
    _check_frozen(s2, at2, "before")
    _check_frozen(s3, at3, "before")
    _check_active(dom, now, "before")
    if not live:
        dom.destroy()
        assert dom.pid() is None

    # the middle one
    _ok(client, client.delete(dom.name, "S2"))
    _assert_gone(client, dom, s2)
    assert _parents(client, dom) == {"S1": None, "S3": "S1"}
    s1, s3 = client.snapshot(dom.name, "S1"), client.snapshot(dom.name, "S3")
    for d in (*s1.disks, *s3.disks):
        assert os.path.exists(d.file), d
        assert d.overlay and os.path.exists(d.overlay), d
    _check_frozen(s1, at1, "after deleting S2")
    _check_frozen(s3, at3, "after deleting S2")
    _check_active(dom, now, "after deleting S2")
    _assert_no_leftovers(client, dom, "after deleting S2")
    assert (dom.pid() is not None) == live

    if live:
        # they still revert to exactly their data; the current data is then written again
        _ok(client, client.revert(dom.name, "S1", start="running"))
        _check_active(dom, at1, "after revert to S1")
        _ok(client, client.revert(dom.name, "S3", start="running"))
        _check_active(dom, at3, "after revert to S3")
        _write(dom, {v: {0: s[0], 4: s[4]} for v, s in now.items()})
        _check_active(dom, now, "written again after revert to S3")
        s3 = client.snapshot(dom.name, "S3")

    # the root: its frozen image is the original disk, which must survive the merge
    _ok(client, client.delete(dom.name, "S1"))
    _assert_gone(client, dom, s1)
    for v, p in originals.items():
        assert os.path.exists(p), f"original image of {v} is gone"
    assert _parents(client, dom) == {"S3": None}
    s3 = client.snapshot(dom.name, "S3")
    for d in s3.disks:
        assert os.path.exists(d.file) and d.overlay and os.path.exists(d.overlay), d
        assert backing_chain(d.file)[-1] == originals[d.vdev], backing_chain(d.file)
    _check_frozen(s3, at3, "after deleting S1")
    _check_active(dom, now, "after deleting S1")
    _assert_no_leftovers(client, dom, "after deleting S1")

    _ok(client, client.delete(dom.name, "S3"))
    _assert_gone(client, dom, s3)
    assert client.snapshots(dom.name) == []
    assert client.current(dom.name) is None
    _check_active(dom, now, "after deleting S3")
    for v, p in originals.items():
        assert os.path.exists(p), f"original image of {v} is gone"
        assert backing_chain(dom.active(v))[-1] == p, backing_chain(dom.active(v))
    _assert_no_leftovers(client, dom, "after deleting every snapshot")
    assert (dom.pid() is not None) == live
    if not live:
        dom.start()
        assert dom.pid() is not None
        _check_active(dom, now, "after starting again")


# ---------------------------------------------------------------- external, branched


def _snapshot_files(dom: Domain) -> dict[str, tuple[int, int]]:
    out = {}
    for p in files_under(_snapdir(dom)) | {str(x) for x in dom.disks.values()}:
        st = os.stat(p)
        out[p] = (st.st_size, st.st_mtime_ns)
    return out


def test_delete_branched_tree(cluster: Cluster, hv_host: str) -> None:
    dom = _domain(cluster, hv_host, "dl-br")
    client = cluster.client()
    a, b, c = _step(dom, 0, 0x66), _step(dom, 1, 0x77), _step(dom, 2, 0x88)
    at1 = _merge(a, _untouched(dom, 2, 3))
    at2 = _merge(a, b, _untouched(dom, 3))
    at3 = _merge(a, c, _untouched(dom, 2))
    _write(dom, a)
    _ok(client, client.create(dom.name, name="S1", disk_only=True, type="external"))
    _write(dom, b)
    _ok(client, client.create(dom.name, name="S2", disk_only=True, type="external"))
    _ok(client, client.revert(dom.name, "S1", start="running"))
    _write(dom, c)
    _ok(client, client.create(dom.name, name="S3", disk_only=True, type="external"))
    now = at3
    assert _parents(client, dom) == {"S1": None, "S2": "S1", "S3": "S1"}
    assert client.current(dom.name) == "S3"

    # S1's frozen image now has two children that matter: refused, nothing changes
    records = {s.name: s.model_dump() for s in client.snapshots(dom.name)}
    files = _snapshot_files(dom)
    sidecars = {n: _sidecar(dom, n).read_text() for n in records}
    config = dom.config()
    job = client.wait(client.delete(dom.name, "S1"), timeout=120)
    assert job.state == "failed", job
    assert job.error is not None and job.error.code == "refused", job.error
    assert "branch" in job.error.message, job.error.message
    assert {s.name: s.model_dump() for s in client.snapshots(dom.name)} == records
    assert _snapshot_files(dom) == files
    assert {n: _sidecar(dom, n).read_text() for n in records} == sidecars
    assert dom.config() == config
    assert client.current(dom.name) == "S3"
    assert dom.pid() is not None
    _check_frozen(client.snapshot(dom.name, "S1"), at1, "after refused delete")
    _check_frozen(client.snapshot(dom.name, "S2"), at2, "after refused delete")
    _check_frozen(client.snapshot(dom.name, "S3"), at3, "after refused delete")
    _check_active(dom, now, "after refused delete")
    # and the lock was given back: the domain takes new work
    assert client.store.lock_owner(dom.uuid) is None

    # the leaves go
    s2 = client.snapshot(dom.name, "S2")
    _ok(client, client.delete(dom.name, "S2"))
    _assert_gone(client, dom, s2)
    _check_frozen(client.snapshot(dom.name, "S1"), at1, "after deleting S2")
    _check_frozen(client.snapshot(dom.name, "S3"), at3, "after deleting S2")
    _check_active(dom, now, "after deleting S2")
    _assert_no_leftovers(client, dom, "after deleting S2")

    s3 = client.snapshot(dom.name, "S3")
    _ok(client, client.delete(dom.name, "S3"))
    _assert_gone(client, dom, s3)
    assert _parents(client, dom) == {"S1": None}
    _check_frozen(client.snapshot(dom.name, "S1"), at1, "after deleting S3")
    _check_active(dom, now, "after deleting S3")
    _assert_no_leftovers(client, dom, "after deleting S3")

    # no longer a branch point: S1 goes too, and the original images carry on
    s1 = client.snapshot(dom.name, "S1")
    _ok(client, client.delete(dom.name, "S1"))
    _assert_gone(client, dom, s1)
    _check_active(dom, now, "after deleting S1")
    for v, p in dom.disks.items():
        assert os.path.exists(p)
        assert backing_chain(dom.active(v))[-1] == str(p)
    _assert_no_leftovers(client, dom, "after deleting every snapshot")


# ---------------------------------------------------------------- parents


def test_delete_middle_rewires_child_parent(cluster: Cluster, hv_host: str) -> None:
    dom = _domain(cluster, hv_host, "dl-par")
    client = cluster.client()
    for n in ("P1", "P2", "P3"):
        _ok(client, client.create(dom.name, name=n, disk_only=True))
    # a second child of P2 too: revert to P2, then P4
    _ok(client, client.revert(dom.name, "P2", start="running"))
    _ok(client, client.create(dom.name, name="P4", disk_only=True))
    assert _parents(client, dom) == {"P1": None, "P2": "P1", "P3": "P2", "P4": "P2"}
    assert client.current(dom.name) == "P4"

    p2 = client.snapshot(dom.name, "P2")
    _ok(client, client.delete(dom.name, "P2"))
    _assert_gone(client, dom, p2)
    assert _parents(client, dom) == {"P1": None, "P3": "P1", "P4": "P1"}
    for n in ("P3", "P4"):
        side = json.loads(_sidecar(dom, n).read_text())
        assert side["parent"] == "P1", (n, side["parent"])
    assert client.current(dom.name) == "P4"

    # deleting the current one moves the pointer to its parent
    _ok(client, client.delete(dom.name, "P4"))
    assert client.current(dom.name) == "P1"
    _ok(client, client.delete(dom.name, "P1"))
    assert _parents(client, dom) == {"P3": None}
    assert json.loads(_sidecar(dom, "P3").read_text())["parent"] is None
    assert client.current(dom.name) is None
