"""Redis (store and broker) taken away mid-operation and given back (defect h).

A private ``redis-server`` on its own port, started and stopped by the test, serves
one ``domsnap worker``. A create is held at its switchover (fault point
``capture-pre-switchover:hold``: the guest is paused) while Redis goes away, then
goes on without it. The worker must ride the outage out (it used to exit:
``AttributeError: 'NoneType' object has no attribute 'hostname'``), the job must end
once Redis is back (it stayed ``running`` with its lock held), and with a Redis that
came back empty the journal must still be cleared (it never was).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from domsnap.client import Client
from domsnap.settings import Settings
from tests.integration.cluster import DOMSNAP, Cluster, Domain, HostHandle, unique_name
from tests.integration.diskdata import qmp_status
from tests.integration.test_create import internal_snapshots

pytestmark = [pytest.mark.integration, pytest.mark.vm]

POINT = "capture-pre-switchover"


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=30)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while self.cli("ping").stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "private redis-server did not come up"
            time.sleep(0.05)

    def stop(self, *, keep: bool) -> None:
        """Shut down; ``keep``: its data is saved and comes back at the next start."""
        assert self.proc is not None
        self.cli("shutdown", "save" if keep else "nosave")
        self.proc.wait(timeout=30)
        self.proc = None
        if not keep:
            (self.dir / "dump.rdb").unlink(missing_ok=True)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path / "redis")
    r.start()
    try:
        yield r
    finally:
        if r.proc is not None:
            r.proc.terminate()
            r.proc.wait(timeout=30)


def _start_worker(cluster: Cluster, h: HostHandle, client: Client) -> None:
    h.log = cluster.base / f"worker-{h.name}.log"
    fh = open(h.log, "ab")  # noqa: SIM115 - lives as long as the worker
    h.proc = subprocess.Popen([*DOMSNAP, "worker", "--loglevel", "INFO"], env=h.env,
                              stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not client.store.host_alive(h.name) or \
            h.log.read_text(errors="replace").count("ready.") < 2:
        assert h.proc.poll() is None and time.monotonic() < deadline, h.log.read_text()
        time.sleep(0.2)


def _journal(h: HostHandle, job: str) -> dict[str, object] | None:
    import json

    try:
        data: dict[str, object] = json.loads((h.state_dir / "journal" / f"{job}.json")
                                             .read_text())
        return data
    except (FileNotFoundError, ValueError):
        return None


def _until(cond: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _held(h: HostHandle, job: str) -> None:
    """The job's capture step runs (and waits at the switchover, guest paused)."""
    _until(lambda: (_journal(h, job) or {}).get("step") == "capture", "the capture step")


def _wait_listed(client: Client, dom: Domain) -> None:
    def listed() -> bool:
        try:
            client.resolve(dom.uuid)
            return True
        except Exception:  # noqa: BLE001 - not yet
            return False

    _until(listed, f"{dom.name} in the inventory", timeout=60)


def test_worker_rides_out_a_redis_outage_and_ends_the_job(cluster: Cluster,
                                                          redis_srv: PrivateRedis) -> None:
    name = f"fr-{cluster.suffix}"
    h = cluster.host(name, DOMSNAP_REDIS_URL=redis_srv.url, DOMSNAP_FAULT=f"{POINT}:hold",
                     DOMSNAP_PAUSE_BUDGET_S="600")
    release = h.state_dir / f"release-{POINT}"
    client = Client(Settings(redis_url=redis_srv.url, key_prefix=cluster.prefix))
    _start_worker(cluster, h, client)
    dom = cluster.create_domain(name, unique_name("rds"), guest=False, disks=1)
    _wait_listed(client, dom)

    # 1. Redis down for 20 s (its data kept) while a create is at its switchover.
    job = client.create(dom.name, name="r1")
    _held(h, job)
    redis_srv.stop(keep=True)
    release.touch()  # the step goes on; its commit meets no Redis
    time.sleep(20)  # the outage itself (what the defect needed to show)
    assert h.proc is not None and h.proc.poll() is None, "the worker exited during the outage"
    redis_srv.start()
    rec = client.wait(job, timeout=120)  # once Redis is back the job ends
    assert rec.state == "failed", rec
    assert client.store.lock_owner(dom.uuid) is None
    assert client.store.list_snapshots(dom.uuid) == []
    _until(lambda: _journal(h, job) is None, "the journal to go")
    assert internal_snapshots(dom.active(dom.vdevs[0])) == []
    assert qmp_status(dom) == "running"
    _wait_listed(client, dom)
    done = client.wait(client.create(dom.name, name="after1"), timeout=120)  # pools serve
    assert done.state == "succeeded", done.error

    # 2. Redis comes back empty (keeps nothing): the journal is cleared all the same.
    release.unlink()
    job2 = client.create(dom.name, name="r2")
    _held(h, job2)
    redis_srv.stop(keep=False)
    release.touch()
    time.sleep(5)
    redis_srv.start()
    _until(lambda: _journal(h, job2) is None, "the journal of a job Redis forgot to go")
    assert internal_snapshots(dom.active(dom.vdevs[0])) == ["after1"]
    assert qmp_status(dom) == "running"
    assert not any((h.state_dir / "pausing").glob("*"))
    assert not (h.snapshots / dom.uuid / "r2.save").exists()
    assert h.proc.poll() is None
    _wait_listed(client, dom)
    done = client.wait(client.create(dom.name, name="after2", disk_only=True), timeout=120)
    assert done.state == "succeeded", done.error


def _outage_at(cluster: Cluster, redis_srv: PrivateRedis, point: str, prefix: str
               ) -> tuple[HostHandle, Client, Domain, Path]:
    """A worker on the private Redis whose steps hold at ``point``, and a domain on a
    qcow2 and a raw disk (the README's example) with one external snapshot ``x1``
    and data written after it."""
    from tests.integration.diskdata import write_pattern

    name = f"{prefix}-{cluster.suffix}"
    h = cluster.host(name, DOMSNAP_REDIS_URL=redis_srv.url, DOMSNAP_FAULT=f"{point}:hold",
                     DOMSNAP_PAUSE_BUDGET_S="600")
    client = Client(Settings(redis_url=redis_srv.url, key_prefix=cluster.prefix))
    _start_worker(cluster, h, client)
    dom = cluster.create_domain(name, unique_name(prefix), guest=False, raw_disk=True)
    _wait_listed(client, dom)
    for vdev in dom.vdevs:
        write_pattern(dom, vdev, 0, 0x3C)
    done = client.wait(client.create(dom.name, name="x1", type="external", disk_only=True),
                       timeout=120)
    assert done.state == "succeeded", done.error
    for vdev in dom.vdevs:
        write_pattern(dom, vdev, 0, 0x4D)
    return h, client, dom, h.state_dir / f"release-{point}"


def _through_an_outage(h: HostHandle, redis_srv: PrivateRedis, job: str, release: Path,
                       step: str) -> None:
    _until(lambda: (_journal(h, job) or {}).get("step") == step, f"the {step} step")
    redis_srv.stop(keep=True)
    release.touch()  # the step goes on; what it records meets no Redis
    time.sleep(10)
    assert h.proc is not None and h.proc.poll() is None, "the worker exited during the outage"
    redis_srv.start()


def _reads(dom: Domain, pattern: int) -> None:
    from tests.integration.model import read_slots

    for vdev in dom.vdevs:
        active = dom.active(vdev)
        fmt = "qcow2" if active.endswith(".qcow2") else "raw"
        assert read_slots(active, fmt, {0: pattern}) == {0: True}, (vdev, active)


def _ended_well(h: HostHandle, client: Client, dom: Domain, job: str, release: Path,
                pattern: int) -> None:
    """The job's journal and lock are gone, the domain runs, every disk reads
    ``pattern``, and the host takes the next job."""
    _until(lambda: _journal(h, job) is None, "the journal to go")
    assert client.store.lock_owner(dom.uuid) is None
    assert qmp_status(dom) == "running"
    _reads(dom, pattern)
    release.unlink()
    # the liveness key ran out during the outage; the host is routed work again once
    # its next listing has published (within one inventory period)
    _wait_listed(client, dom)
    done = client.wait(client.create(dom.name, name="after", type="external", disk_only=True),
                       timeout=120)
    assert done.state == "succeeded", done.error


def test_a_revert_rides_out_a_redis_outage(cluster: Cluster, redis_srv: PrivateRedis) -> None:
    """Redis goes away after a revert made its new overlays (raw + qcow2 disks): the
    revert is carried through once Redis is back; the disks read the snapshot's data."""
    h, client, dom, release = _outage_at(cluster, redis_srv, "revert-after-disks", "frv")
    job = client.revert(dom.name, "x1", start="running")
    _through_an_outage(h, redis_srv, job, release, "revert")
    rec = client.wait(job, timeout=180)
    assert rec.state == "succeeded", rec.error
    assert client.store.current(dom.uuid) == "x1"
    _ended_well(h, client, dom, job, release, 0x3C)


def test_a_delete_rides_out_a_redis_outage(cluster: Cluster, redis_srv: PrivateRedis) -> None:
    """Redis goes away right after a delete merged the overlays down (raw + qcow2):
    the delete ends once Redis is back; the data written after the snapshot stays."""
    h, client, dom, release = _outage_at(cluster, redis_srv, "delete-after-commit", "fdl")
    job = client.delete(dom.name, "x1")
    _through_an_outage(h, redis_srv, job, release, "delete")
    rec = client.wait(job, timeout=180)
    assert rec.state == "succeeded", rec.error
    assert client.store.list_snapshots(dom.uuid) == []
    assert [dom.active(v) for v in dom.vdevs] == [str(p) for p in dom.disks.values()]
    _ended_well(h, client, dom, job, release, 0x4D)
