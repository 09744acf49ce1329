"""Limits. Free space is checked before anything is written: a memory image or an
overlay that would not fit is refused at planning with a clear error, and nothing
changes (invariants 2 and 5); each filesystem is a real tmpfs of a known size, mounted
under a snapshot root. A step that runs past the task time limit is rolled back and its
job fails with a timeout, the domain left as it was."""

from __future__ import annotations

import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.models import DiskChoice
from tests.integration.cluster import Cluster, Domain, listed_domain
from tests.integration.test_create import internal_snapshots
from tests.integration.test_failures import state_of

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture
def small_fs(cluster: Cluster, h1: str, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs under h1's snapshot root (DOMSNAP_SNAPSHOT_ROOTS): ``request.param`` is its
    size in MiB, or (size, inodes): a filesystem with bytes free but no room for a new
    file, so a write fails with ENOSPC after every free-space check passed."""
    size, inodes = request.param if isinstance(request.param, tuple) else (request.param, 0)
    mnt = cluster.hosts[h1].images / f"fs-{uuidlib.uuid4().hex[:8]}"
    mnt.mkdir(mode=0o700)
    opts = f"size={size}M,mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "domsnap-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
        mnt.rmdir()


@pytest.fixture(scope="module")
def dom(cluster: Cluster, h1: str) -> Domain:
    return listed_domain(cluster, h1, "roomy")


@pytest.mark.parametrize("small_fs", [64], indirect=True)
def test_memory_image_that_does_not_fit_is_refused(cluster: Cluster, dom: Domain,
                                                   small_fs: Path) -> None:
    client = cluster.client()
    before = state_of(cluster, dom)
    job = client.wait(client.create(dom.name, name="big", memory_file=str(small_fs / "m.save")),
                      timeout=120)
    assert job.state == "failed"
    assert job.error is not None and job.error.code == "insufficient_space", job.error
    assert "not enough free space for memory image" in job.error.message
    assert str(small_fs / "m.save") in job.error.message
    assert list(small_fs.iterdir()) == []
    assert state_of(cluster, dom) == before
    assert dom.state() == "running"


@pytest.mark.parametrize("small_fs", [8], indirect=True)
def test_overlay_on_a_full_filesystem_is_refused(cluster: Cluster, dom: Domain,
                                                 small_fs: Path) -> None:
    client = cluster.client()
    before = state_of(cluster, dom)
    vdev = dom.vdevs[0]
    target = small_fs / "o.qcow2"
    job = client.wait(client.create(dom.name, name="ext", disk_only=True, type="external",
                                    disks=[DiskChoice(vdev=vdev, target=str(target))]),
                      timeout=120)
    assert job.state == "failed"
    assert job.error is not None and job.error.code == "insufficient_space", job.error
    assert f"overlay of {vdev}" in job.error.message and "reserve" in job.error.message
    assert list(small_fs.iterdir()) == []
    assert state_of(cluster, dom) == before


@pytest.mark.parametrize("small_fs", [512], indirect=True)
def test_a_memory_image_that_fits_is_taken(cluster: Cluster, dom: Domain,
                                           small_fs: Path) -> None:
    """The check does not refuse what fits: 128 MiB × 1.25 + the 256 MiB reserve < 512."""
    client = cluster.client()
    job = client.wait(client.create(dom.name, name="fits", memory_file=str(small_fs / "m.save")),
                      timeout=120)
    assert job.state == "succeeded", job.error
    assert (small_fs / "m.save").stat().st_size > 0
    done = client.wait(client.delete(dom.name, "fits"), timeout=120)
    assert done.state == "succeeded", done.error
    assert list(small_fs.iterdir()) == []


def test_a_step_past_the_task_time_limit_is_rolled_back(cluster: Cluster) -> None:
    """A dom0 whose guest never acknowledges the suspend: libxl would wait 60 s, the
    task time limit (20 s) stops the capture first; the job fails as a timeout, the
    guest keeps running, nothing is left behind, and the host takes the next job (a
    disk-only create, which must fit in the limit: on a loaded 2-core host it once
    took more than 10 s)."""
    h = cluster.start_worker(f"xt-{cluster.suffix}", driver="xl",
                             DOMSNAP_TASK_TIME_LIMIT_S="20", XL_STANDIN_SUSPEND_TIMEOUT="60")
    dom = listed_domain(cluster, h.name, "slowsus")
    (dom.host.xen / "domains" / dom.uuid / "no-suspend").touch()
    client = cluster.client()
    before = state_of(cluster, dom)
    job = client.wait(client.create(dom.name, name="late"), timeout=120)
    assert job.state == "failed"
    assert job.error is not None and job.error.code == "timeout", job.error
    assert "DOMSNAP_TASK_TIME_LIMIT_S=20" in job.error.message
    assert dom.state() == "running"
    assert state_of(cluster, dom) == before
    assert client.store.lock_owner(dom.uuid) is None
    (dom.host.xen / "domains" / dom.uuid / "no-suspend").unlink()
    job = client.wait(client.create(dom.name, name="ontime", disk_only=True), timeout=120)
    assert job.state == "succeeded", job.error
    cluster.stop_worker(h.name)


@pytest.mark.parametrize("small_fs", [(512, 1)], indirect=True)
@pytest.mark.parametrize("what", ["memory", "overlay"])
def test_enospc_while_writing_rolls_back(cluster: Cluster, dom: Domain, small_fs: Path,
                                         what: str) -> None:
    """ENOSPC after the checks passed (the filesystem has bytes but no inode left): the
    job fails naming the error, the guest runs, nothing is left and nothing changed."""
    client = cluster.client()
    before = state_of(cluster, dom)
    if what == "memory":
        jid = client.create(dom.name, name="nospc-m", memory_file=str(small_fs / "m.save"))
    else:
        jid = client.create(dom.name, name="nospc-o", disk_only=True, type="external",
                            disks=[DiskChoice(vdev=dom.vdevs[0],
                                              target=str(small_fs / "o.qcow2"))])
    job = client.wait(jid, timeout=120)
    assert job.state == "failed"
    assert job.error is not None and "No space left on device" in job.error.message, job.error
    assert list(small_fs.iterdir()) == []
    assert state_of(cluster, dom) == before
    assert dom.state() == "running"
    assert client.store.lock_owner(dom.uuid) is None


def test_enospc_on_the_sidecar_rolls_back_the_disks(cluster: Cluster, tmp_path: Path) -> None:
    """The host's snapshot dir has room for the domain's directory and nothing more: the
    disks were snapshotted, then the sidecar record cannot be written. The create rolls
    back every internal snapshot it took, no record appears, the guest runs."""
    snapdir = tmp_path / "snaps"
    snapdir.mkdir(mode=0o700)
    # inodes: the root, the domain's directory; no file fits
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M,mode=0700,nr_inodes=2",
                    "domsnap-test", str(snapdir)], check=True)
    name = f"nsc-{cluster.suffix}"
    try:
        h = cluster.start_worker(name, DOMSNAP_SNAPSHOT_DIR=str(snapdir),
                                 DOMSNAP_SPACE_RESERVE_MB="0")
        dom = listed_domain(cluster, h.name, "nosidecar")
        client = cluster.client()
        job = client.wait(client.create(dom.name, name="s1", disk_only=True), timeout=120)
        assert job.state == "failed"
        assert job.error is not None and "No space left on device" in job.error.message, \
            job.error
        steps = [e.step for e in client.store.events(job.job_id)]
        assert "resumed" in steps and "rollback" in steps, steps  # past the disks, undone
        for vdev in dom.vdevs:
            assert internal_snapshots(dom.active(vdev)) == [], vdev
        assert client.snapshots(dom.name) == [] and client.current(dom.name) is None
        assert [p.name for p in snapdir.iterdir()] in ([], [dom.uuid])
        assert not any((snapdir / dom.uuid).iterdir()) if (snapdir / dom.uuid).exists() \
            else True
        assert dom.state() == "running"
        assert client.store.lock_owner(dom.uuid) is None
    finally:
        if name in cluster.hosts:
            cluster.stop_worker(name)
        subprocess.run(["umount", "-l", str(snapdir)], check=True)
