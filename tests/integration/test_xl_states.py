"""Every state `xl list` can print keeps the inventory whole, and a domain in a state no
snapshot path is safe for is refused with the reason (issue 9: during `xl save` of a
big domU, `---ss-` made the whole heartbeat fail, and after a save that died the worker
could not even start).

A save that died after the suspend is reproduced on the stand-in as Xen leaves it: the
domain shut down for its suspend (`---ss-`, the stand-in's marker) with its vCPUs
stopped (the device model's `stop`), and `xl unpause` unable to resume it.
"""

from __future__ import annotations

import time

import pytest

from domsnap.errors import DomsnapError
from tests.integration.cluster import Cluster, Domain, listed_domain
from tests.integration.test_failures import state_of
from workers.block.qmp import QMPClient

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def _state_in_inventory(cluster: Cluster, dom: Domain, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = cluster.client().resolve(dom.uuid)[1].state
        except DomsnapError as exc:
            seen = f"{type(exc).__name__}: {exc}"
        if seen == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"{dom.name}: inventory says {seen}, not {want}")


def _leave_suspended(dom: Domain) -> None:
    """What an `xl save` killed after the suspend leaves behind."""
    (dom.host.xen / "domains" / dom.uuid / "suspended").touch()
    with QMPClient(dom.qmp, timeout=10) as q:
        q.execute("stop")


def test_a_domain_left_suspended_is_listed_refused_and_survives_a_worker_restart(
        cluster: Cluster) -> None:
    name = f"xst-{cluster.suffix}"
    h = cluster.start_worker(name, driver="xl")
    stuck = listed_domain(cluster, name, "stuck")
    fine = listed_domain(cluster, name, "fine")
    client = cluster.client()
    _leave_suspended(stuck)
    row = h.xl("list", stuck.name).stdout.splitlines()[-1].split()
    assert row[4] == "---ss-"
    h.xl("unpause", stuck.name)  # as on Xen: no xl verb resumes it
    assert h.xl("list", stuck.name).stdout.splitlines()[-1].split()[4] == "---ss-"
    _state_in_inventory(cluster, stuck, "suspended")
    _state_in_inventory(cluster, fine, "running")  # one odd domain hides no other

    before = state_of(cluster, stuck)
    job = client.wait(client.create(stuck.name, name="s1"), timeout=120)
    assert job.state == "failed" and job.error is not None
    assert job.error.code == "refused"
    assert f"domain {stuck.name} is suspended" in job.error.message
    assert "save that never finished" in job.error.message
    assert state_of(cluster, stuck) == before
    # the other domain of the host is served as usual
    ok = client.wait(client.create(fine.name, name="f1", disk_only=True), timeout=120)
    assert ok.state == "succeeded", ok.error

    cluster.stop_worker(name)  # start-up lists domains before anything else
    cluster.start_worker(name, driver="xl")
    _state_in_inventory(cluster, stuck, "suspended")
    _state_in_inventory(cluster, fine, "running")

    # what does resume it: xc_domain_resume(fast) + xs_resume_domain, as libxl after a
    # failed save (workers/drivers/xenresume.py), here through the operator command
    h.cli("domain-unpause", stuck.name, check=True)
    assert h.xl("list", stuck.name).stdout.splitlines()[-1].split()[4] == "r-----"
    with QMPClient(stuck.qmp, timeout=10) as q:
        assert q.execute("query-status")["status"] == "running"
    _state_in_inventory(cluster, stuck, "running")
    job = client.wait(client.create(stuck.name, name="s2"), timeout=120)
    assert job.state == "succeeded", job.error
    cluster.stop_worker(name)


def test_xenresume_refuses_bad_arguments_and_reports_binding_errors(cluster: Cluster) -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "workers.drivers.xenresume"]
    for bad in ([], ["0"], ["-1"], ["x"], ["32752"], ["1", "2"]):
        proc = subprocess.run([*run, *bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "usage" in proc.stderr, bad
    proc = subprocess.run([*run, "--bindings", "/nonexistent", "7"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "resuming domain 7: ModuleNotFoundError" in proc.stderr
