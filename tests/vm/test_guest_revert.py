"""A real Linux guest reverted to a memory+disk snapshot carries on from the
snapshot's instant: its in-memory tick counter continues from there (no reboot),
and its disks hold what they held at that instant (memory and disks agree).

The guest prints ``DOMSNAP-TICK n=<n> disk=<prev>`` once a second and then writes
n into the first block of vda and vdb; ``prev`` is what vda held before the tick.
QEMU appends to the same console.log across restarts, so what a revert brought
is split from what came before by the byte offset taken just before it.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path
from typing import Literal

import pytest

from domsnap.client import Client
from schemas.models import JobRecord
from tests.integration.cluster import Cluster, Domain
from tests.integration.diskdata import qmp_status
from tests.vm.guest import (
    BOOT_MARKER,
    TICK_RE,
    console_tail,
    count_boots,
    read_disk_counter,
    read_ticks,
    wait_for_tick,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]

TICK_TIMEOUT = 60.0


def _ok(client: Client, job_id: str, timeout: float = 180) -> JobRecord:
    job = client.wait(job_id, timeout=timeout)
    assert job.state == "succeeded", f"job {job.op} {job.name}: {job.error}"
    return job


def _text_after(console: Path, offset: int) -> str:
    with console.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


def _ticks_after(console: Path, offset: int) -> list[tuple[int, int]]:
    lines = _text_after(console, offset).split("\n")[:-1]  # complete lines only
    out = []
    for line in lines:
        m = TICK_RE.search(line)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def _restart_ticks(console: Path, offset: int, prev: int) -> list[tuple[int, int]]:
    """The ticks after ``offset`` that the restarted QEMU printed.

    Until the revert stops it, the old QEMU goes on printing prev+1, prev+2, ...
    The first tick that breaks that run is the first one of the new instance.
    """
    ticks = _ticks_after(console, offset)
    expect = prev + 1
    for i, (n, _) in enumerate(ticks):
        if n != expect:
            return ticks[i:]
        expect += 1
    return []


def _wait_restart_tick(console: Path, offset: int, prev: int) -> tuple[int, int]:
    deadline = time.monotonic() + TICK_TIMEOUT
    while True:
        new = _restart_ticks(console, offset, prev)
        if new:
            return new[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no tick from the reverted guest within {TICK_TIMEOUT}s (old run ended "
                f"at n>={prev}); ticks after the revert: {_ticks_after(console, offset)}\n"
                f"console:\n{console_tail(console)}")
        time.sleep(0.1)


def _last_tick(dom: Domain) -> int:
    ticks = read_ticks(dom.console)
    assert ticks, console_tail(dom.console)
    return ticks[-1][0]


@pytest.mark.parametrize("kind", ["internal", "external"])
def test_guest_continues_from_snapshot(cluster: Cluster, hv_host: str,
                                      kind: Literal["internal", "external"]) -> None:
    dom = cluster.create_domain(hv_host, f"gr-{kind[:3]}-{uuidlib.uuid4().hex[:6]}", guest=True,
                                disks=2, tick=1.0)
    cluster.wait_inventory(dom)
    client = cluster.client()
    wait_for_tick(dom.console, 4, TICK_TIMEOUT)

    # The snapshot's instant lies inside the create job: at its end for a pause-save
    # (the QEMU driver, xl save -p), at the last precopy round for a live memory
    # snapshot (xl's default), which comes a second or more before the job ends on a
    # loaded host. So the instant is bounded by the last tick before the job (t0) and
    # the last one after it (t).
    t0 = _last_tick(dom)
    _ok(client, client.create(dom.name, name="g1", type=kind))
    t = _last_tick(dom)
    window = range(t0, t + 2)  # the first tick after a revert: one past the instant's
    rec = client.snapshot(dom.name, "g1")
    assert not rec.disk_only and rec.memory_file and rec.domain_state == "running"
    assert {d.type for d in rec.disks} == {kind}
    wait_for_tick(dom.console, t + 4, TICK_TIMEOUT)

    # ---- revert: the guest resumes at the snapshot's tick
    offset = dom.console.stat().st_size
    prev = _last_tick(dom)
    job = _ok(client, client.revert(dom.name, "g1"))
    assert job.result is not None and job.result["state"] == "running", job.result
    assert dom.pid() is not None and qmp_status(dom) == "running"
    n, disk = _wait_restart_tick(dom.console, offset, prev)
    after = _text_after(dom.console, offset)
    assert BOOT_MARKER not in after, f"the guest rebooted after the revert:\n{after[-2000:]}"
    assert count_boots(dom.console) == 1
    assert n in window, f"first tick after revert n={n}; snapshot taken within ticks {t0}..{t}"
    assert disk == n - 1, f"tick {n} read disk={disk}: disks do not match the memory image"
    for vdev in dom.vdevs:
        img = dom.active(vdev)
        if kind == "external":
            assert img not in {p for d in rec.disks for p in (d.file, d.overlay)}, img

    # ---- revert --paused: the disks hold the snapshot instant, the guest waits
    wait_for_tick(dom.console, n + 1, TICK_TIMEOUT)
    offset = dom.console.stat().st_size
    prev = _last_tick(dom)
    job = _ok(client, client.revert(dom.name, "g1", start="paused"))
    assert job.result is not None and job.result["state"] == "paused", job.result
    assert dom.pid() is not None
    status = qmp_status(dom)
    assert status != "running" and status in ("paused", "postmigrate", "prelaunch"), status
    vda = read_disk_counter(Path(dom.active(dom.vdevs[0])))
    vdb = read_disk_counter(Path(dom.active(dom.vdevs[1])))
    # the snapshot's vda held n-1, or n-2 if the instant fell between tick n-1's print
    # and its write (then tick n-1 is written after the resume)
    assert vda in (n - 2, n - 1), f"vda holds {vda} right after a paused revert; the " \
        f"reverted guest's first tick was {n}"
    assert vdb is not None and vdb in (vda - 1, vda), (vda, vdb)  # vdb is written after vda
    time.sleep(2.5)  # a paused guest prints nothing
    assert _restart_ticks(dom.console, offset, prev) == [], _text_after(dom.console, offset)

    dom.unpause()
    assert qmp_status(dom) == "running"
    n2, disk2 = _wait_restart_tick(dom.console, offset, prev)
    assert BOOT_MARKER not in _text_after(dom.console, offset)
    assert n2 == n, f"first tick after the paused revert n={n2}; after the first revert of " \
        f"the same snapshot it was {n}"
    assert disk2 == n2 - 1 and disk2 in (vda, vda + 1), (n2, disk2, vda)
    # and it keeps ticking
    wait_for_tick(dom.console, n2 + 1, TICK_TIMEOUT)
    assert [m for m, _ in _restart_ticks(dom.console, offset, prev)][:2] == [n2, n2 + 1]
