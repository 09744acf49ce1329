"""The contract every hypervisor driver keeps (workers/drivers/base.py), one suite
for all of them, in-process against real QEMU and real qcow2 images.

- ``qemu``: domsnap's own QEMU.
- ``xl``: the xl driver against the stand-in ``xl`` (tests/xlstandin) on real QEMU
  processes, with the device-model QMP socket at ``qmp-libxl-<domid>``.
- ``null``: no hypervisor (workers/drivers/null.py, for benchmarks only), real qcow2
  images through qemu-img: held to the same contract, so the fleet benchmark measures
  a driver that behaves like the others.

A new driver joins by adding a :class:`Toolstack` below; the tests do not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from domsnap.errors import UnknownDomain
from domsnap.xlcfg import load_domain_config
from schemas.config import DomainConfig
from tests.integration.cluster import STANDIN_DIR, standin_env
from workers.block.lvm import Lvm
from workers.block.qemu_img import QemuImg
from workers.drivers.base import DiskOp, Driver
from workers.drivers.null import NullDriver
from workers.drivers.qemu import QemuDriver
from workers.drivers.xl import XlDriver
from workers.hostio.runner import SubprocessRunner

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def _snapshots(path: str) -> list[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


class Toolstack:
    """What a test needs beyond the driver: a way to bring a new domain into being."""

    driver: Driver
    vdev_prefix: str

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_domain(self, name: str) -> str:
        disks = []
        for i in range(2):
            vdev = f"{self.vdev_prefix}{'ab'[i]}"
            path = self.root / f"{name}-{vdev}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"],
                           check=True)
            disks.append(f'"{path},qcow2,{vdev},rw"')
        uuid = str(uuidlib.uuid4())
        cfg = self.root / f"{name}.cfg"
        cfg.write_text(f'name = "{name}"\nuuid = "{uuid}"\nmemory = 64\nvcpus = 1\n'
                       f'disk = [ {", ".join(disks)} ]\n')
        self.create(cfg)
        return uuid

    def create(self, cfg: Path) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError


class QemuToolstack(Toolstack):
    vdev_prefix = "vd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.qemu = QemuDriver(root / "state", SubprocessRunner(), timeout=120,
                               run_dir=root / "run")
        self.driver = self.qemu

    def create(self, cfg: Path) -> None:
        config = self.qemu.define(load_domain_config(str(cfg)))
        assert config.uuid is not None
        self.qemu.start(config.uuid, config, paused=False)

    def cleanup(self) -> None:
        for info in self.qemu.list_domains():
            self.qemu.destroy(info.uuid)


class NullToolstack(Toolstack):
    vdev_prefix = "xvd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.null = NullDriver(root / "state", SubprocessRunner())
        self.driver = self.null

    def create(self, cfg: Path) -> None:
        self.null.define(load_domain_config(str(cfg)), state="running")

    def cleanup(self) -> None:
        for info in self.null.list_domains():
            self.null.destroy(info.uuid)


class XlToolstack(Toolstack):
    vdev_prefix = "xvd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        runner = SubprocessRunner()
        self.run = root / "run"
        self.run.mkdir()
        self.env = standin_env(root / "xen", self.run)
        self.driver = XlDriver(root / "state", runner, img=QemuImg(runner), lvm=Lvm(runner),
                               binary=str(STANDIN_DIR / "xl"), xen_run_dir=self.run,
                               timeout=120)

    def create(self, cfg: Path) -> None:
        subprocess.run([str(STANDIN_DIR / "xl"), "create", str(cfg)], check=True,
                       env={**os.environ, **self.env}, capture_output=True)
        self.driver.list_domains()  # a dom0 worker registers what xl shows it

    def cleanup(self) -> None:
        for info in self.driver.list_domains():
            self.driver.destroy(info.uuid)


@pytest.fixture(scope="module", params=["qemu", "xl", "null"])
def ts(request: pytest.FixtureRequest) -> Iterator[Toolstack]:
    root = Path(tempfile.mkdtemp(prefix="dc", dir="/tmp"))  # short: unix socket paths
    with pytest.MonkeyPatch.context() as mp:
        stack: Toolstack
        if request.param == "xl":
            stack = XlToolstack(root)
            for key, value in stack.env.items():  # the stand-in reads them from xl's env
                mp.setenv(key, value)
        elif request.param == "null":
            stack = NullToolstack(root)
        else:
            stack = QemuToolstack(root)
        try:
            yield stack
        finally:
            stack.cleanup()
            subprocess.run(["rm", "-rf", str(root)], check=False)


def _ops(cfg: DomainConfig, kind: str, name: str, root: Path) -> list[DiskOp]:
    return [DiskOp(vdev=d.vdev, path=str(d.target), format=d.format,
                   type=kind,  # type: ignore[arg-type]
                   target=str(root / f"{name}.{d.vdev}.qcow2") if kind == "external" else None,
                   backend=d.backendtype)
            for d in cfg.disks]


def _with_strategies(drv: Driver, uuid: str, ops: list[DiskOp], *, active: bool
                     ) -> list[DiskOp]:
    from dataclasses import replace

    return [replace(op, strategy=s)
            for op, s in zip(ops, drv.disk_strategies(uuid, ops, active=active), strict=True)]


def test_inventory_and_run_state(ts: Toolstack) -> None:
    drv = ts.driver
    uuid = ts.new_domain("c-inv")
    info = drv.domain_info(uuid)
    assert (info.name, info.state) == ("c-inv", "running")
    assert [d.vdev for d in info.disks] == [f"{ts.vdev_prefix}a", f"{ts.vdev_prefix}b"]
    assert all(d.path and d.format == "qcow2" and d.writable for d in info.disks)
    assert uuid in {i.uuid for i in drv.list_domains()}
    assert drv.is_active(uuid)
    drv.pause(uuid)
    assert drv.domain_info(uuid).state == "paused"
    drv.unpause(uuid)
    assert drv.domain_info(uuid).state == "running"
    drv.destroy(uuid)
    assert drv.domain_info(uuid).state == "shutoff"  # shut off, still known
    assert {i.uuid: i.state for i in drv.list_domains()}[uuid] == "shutoff"
    assert not drv.is_active(uuid)
    drv.destroy(uuid)  # no-op when shut off
    with pytest.raises(UnknownDomain):
        drv.domain_info(str(uuidlib.uuid4()))


def test_capture_memory_and_internal_disks_then_undo(ts: Toolstack) -> None:
    drv = ts.driver
    uuid = ts.new_domain("c-int")
    cfg = drv.domain_config(uuid)
    ops = _with_strategies(drv, uuid, _ops(cfg, "internal", "s1", ts.root), active=True)
    assert {op.strategy for op in ops} == {"qmp"}
    mem = ts.root / "snaps" / "s1.save"
    steps: list[str] = []
    res = drv.capture(uuid, name="s1", memory_file=mem, disks=ops,
                      progress=lambda step, msg: steps.append(step))
    assert res.domain_state == "running" and drv.domain_info(uuid).state == "running"
    assert res.memory_bytes and res.memory_bytes == mem.stat().st_size
    assert res.pause_ms is not None and res.pause_ms > 0
    assert oct(mem.stat().st_mode & 0o777) == "0o600"
    assert oct(mem.parent.stat().st_mode & 0o777) == "0o700"
    for op in ops:
        assert "s1" in _snapshots(op.path)
    drv.undo_disks(uuid, name="s1", disks=ops)
    for op in ops:
        assert _snapshots(op.path) == []
    assert drv.domain_info(uuid).state == "running"


def test_capture_keeps_a_paused_domain_paused(ts: Toolstack) -> None:
    drv = ts.driver
    uuid = ts.new_domain("c-pau")
    drv.pause(uuid)
    ops = _with_strategies(drv, uuid, _ops(drv.domain_config(uuid), "internal", "p1", ts.root),
                           active=True)
    res = drv.capture(uuid, name="p1", memory_file=ts.root / "p1.save", disks=ops,
                      progress=lambda s, m: None)
    assert res.domain_state == "paused" and drv.domain_info(uuid).state == "paused"


def test_external_disk_only_then_live_merge(ts: Toolstack) -> None:
    drv = ts.driver
    uuid = ts.new_domain("c-ext")
    cfg = drv.domain_config(uuid)
    ops = _with_strategies(drv, uuid, _ops(cfg, "external", "e1", ts.root), active=True)
    res = drv.capture(uuid, name="e1", memory_file=None, disks=ops, progress=lambda s, m: None)
    assert res.memory_bytes is None and drv.domain_info(uuid).state == "running"
    for op in ops:
        assert op.target and Path(op.target).exists()
    moved = {op.path: op.target for op in ops}
    drv.set_domain_config(uuid, cfg.model_copy(update={"disks": [
        d.model_copy(update={"target": moved[str(d.target)]}) for d in cfg.disks]}))
    assert [d.target for d in drv.domain_config(uuid).disks] == [op.target for op in ops]
    for op in ops:  # merge the overlay back into its base while the domain runs
        assert op.target is not None
        drv.commit_live(uuid, top=op.target, base=op.path)
    assert drv.domain_info(uuid).state == "running"


def test_internal_delete_live(ts: Toolstack) -> None:
    drv = ts.driver
    uuid = ts.new_domain("c-del")
    ops = _with_strategies(drv, uuid, _ops(drv.domain_config(uuid), "internal", "d1", ts.root),
                           active=True)
    drv.capture(uuid, name="d1", memory_file=None, disks=ops, progress=lambda s, m: None)
    drv.delete_internal_live(uuid, name="d1", path=ops[0].path)
    assert _snapshots(ops[0].path) == [] and _snapshots(ops[1].path) == ["d1"]


def test_restore_from_memory_and_start_cold(ts: Toolstack) -> None:
    drv = ts.driver
    uuid = ts.new_domain("c-res")
    cfg = drv.domain_config(uuid)
    ops = _with_strategies(drv, uuid, _ops(cfg, "internal", "r1", ts.root), active=True)
    mem = ts.root / "r1.save"
    drv.capture(uuid, name="r1", memory_file=mem, disks=ops, progress=lambda s, m: None)
    drv.destroy(uuid)
    assert _with_strategies(drv, uuid, ops, active=False)[0].strategy == "qemu-img"
    drv.start(uuid, cfg, paused=True, memory_file=mem)
    assert drv.domain_info(uuid).state == "paused"
    drv.unpause(uuid)
    assert drv.domain_info(uuid).state == "running"
    drv.destroy(uuid)
    drv.start(uuid, drv.domain_config(uuid), paused=False)
    assert drv.domain_info(uuid).state == "running"
    assert drv.domain_config(uuid).name == "c-res"
