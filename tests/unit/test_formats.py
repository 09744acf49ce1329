"""The pure format rules behind invariant 7 (what the records say about an image is
what the image is): the format each path is known by, the config after an external
snapshot and after a revert, the record's overlay format, and the drivers' refusal to
open an image as a format it is not. The images themselves are checked for real in
tests/integration/test_mixed_formats.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from domsnap.errors import InvalidInput
from schemas.config import DiskSpec, DomainConfig
from schemas.models import DiskSnapshot, SnapshotRecord
from workers.drivers.base import DiskOp
from workers.drivers.qemu import QemuDriver
from workers.drivers.xlwindow import retarget as _retarget
from workers.engine.create import config_after_create
from workers.engine.formats import known_formats
from workers.engine.revert import _config_after
from workers.hostio.runner import RecordingRunner

UUID = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"


def _cfg(*disks: tuple[str, str, str]) -> DomainConfig:
    return DomainConfig(name="web1", uuid=UUID, disks=[
        DiskSpec(vdev=v, target=t, format=f) for v, t, f in disks])  # type: ignore[arg-type]


def _rec(name: str, *disks: DiskSnapshot, config: DomainConfig | None = None) -> SnapshotRecord:
    return SnapshotRecord(name=name, domain=UUID, domain_name="web1", host="h", driver="qemu",
                          created_at=1.0, domain_state="running", disk_only=True, disks=list(disks),
                          domain_config=config or _cfg())


def _ext(vdev: str, file: str, fmt: str, overlay: str) -> DiskSnapshot:
    return DiskSnapshot(vdev=vdev, type="external", format=fmt, file=file,  # type: ignore[arg-type]
                        overlay=overlay)


ROOT, DATA = ("xvda", "/i/root.qcow2", "qcow2"), ("xvdb", "/i/data.raw", "raw")


@pytest.mark.parametrize("strategy", ["qmp", "qemu-img", "save-restore"])
def test_external_snapshot_runs_the_raw_disk_on_a_qcow2_overlay(strategy: str) -> None:
    ops = [DiskOp(vdev="xvda", path="/i/root.qcow2", format="qcow2", type="internal",
                  strategy=strategy),
           DiskOp(vdev="xvdb", path="/i/data.raw", format="raw", type="external",
                  target="/s/e1.xvdb.qcow2", strategy=strategy)]
    after = config_after_create(_cfg(ROOT, DATA), ops)
    assert [(d.target, d.format) for d in after.disks] == [
        ("/i/root.qcow2", "qcow2"), ("/s/e1.xvdb.qcow2", "qcow2")]


def test_lvm_snapshot_keeps_the_origin_volume_raw() -> None:
    ops = [DiskOp(vdev="xvdb", path="/dev/vg/data", format="raw", type="external",
                  target="/dev/vg/data-snap", strategy="lvm")]
    after = config_after_create(_cfg(("xvdb", "/dev/vg/data", "raw")), ops)
    assert [(d.target, d.format) for d in after.disks] == [("/dev/vg/data", "raw")]


def test_record_overlay_format_defaults_to_qcow2_for_older_records() -> None:
    d = DiskSnapshot.model_validate({"vdev": "xvdb", "type": "external", "format": "raw",
                                     "file": "/i/data.raw", "overlay": "/s/e1.qcow2"})
    assert d.overlay_format == "qcow2"
    internal = DiskSnapshot(vdev="xvda", type="internal", format="qcow2", file="/i/root.qcow2")
    assert internal.overlay_format is None
    with pytest.raises(ValidationError, match="overlay_format"):
        DiskSnapshot(vdev="xvda", type="internal", format="qcow2", file="/i/root.qcow2",
                     overlay_format="qcow2")


def test_known_formats_overlay_beats_a_stale_claim() -> None:
    """An older domsnap recorded a raw disk's overlay as raw (in the config, and in the
    next snapshot's record): a file domsnap made as an overlay is qcow2 whatever else
    says so; otherwise the config names what the domain opens."""
    e1 = _rec("e1", _ext("xvdb", "/i/data.raw", "raw", "/s/e1.qcow2"))
    e2 = _rec("e2", _ext("xvdb", "/s/e1.qcow2", "raw", "/s/e2.qcow2"))  # the old bug
    stale = _cfg(ROOT, ("xvdb", "/s/e2.qcow2", "raw"))
    got = known_formats(stale, [e1, e2])
    assert got == {"/i/root.qcow2": "qcow2", "/i/data.raw": "raw", "/s/e1.qcow2": "qcow2",
                   "/s/e2.qcow2": "qcow2"}


def test_known_formats_config_beats_a_record_and_lvm_has_no_overlay() -> None:
    rec = _rec("l1", DiskSnapshot(vdev="xvdc", type="external", format="raw",
                                  file="/dev/vg/c-l1", strategy="lvm"),
               DiskSnapshot(vdev="xvda", type="internal", format="raw", file="/i/root.qcow2"))
    got = known_formats(_cfg(ROOT), [rec])
    assert got == {"/dev/vg/c-l1": "raw", "/i/root.qcow2": "qcow2"}


def test_revert_config_names_qcow2_for_every_new_image_and_keeps_the_rest() -> None:
    at_snapshot = _cfg(ROOT, DATA, ("xvdc", "/i/other.raw", "raw"))
    rec = _rec("e1", _ext("xvdb", "/i/data.raw", "raw", "/s/e1.qcow2"), config=at_snapshot)
    now = _cfg(ROOT, ("xvdb", "/s/e1.qcow2", "qcow2"), ("xvdc", "/i/other.raw", "raw"))
    after = _config_after(rec, now, {"xvdb": "/s/e1.xvdb.rdeadbeef.qcow2"})
    assert [(d.vdev, d.target, d.format) for d in after.disks] == [
        ("xvda", "/i/root.qcow2", "qcow2"), ("xvdb", "/s/e1.xvdb.rdeadbeef.qcow2", "qcow2"),
        ("xvdc", "/i/other.raw", "raw")]


def test_xl_retarget_moves_image_and_format_together() -> None:
    cfg = _cfg(ROOT, DATA)
    moved = _retarget(cfg, {"/i/data.raw": ("/s/e1.qcow2", "qcow2")})
    assert [(d.target, d.format) for d in moved.disks] == [("/i/root.qcow2", "qcow2"),
                                                            ("/s/e1.qcow2", "qcow2")]
    back = _retarget(moved, {"/s/e1.qcow2": ("/i/data.raw", "raw")})
    assert back == cfg


def test_qemu_driver_never_opens_an_image_as_another_format(tmp_path: Path) -> None:
    drv = QemuDriver(tmp_path, RecordingRunner(), accel=["tcg"], run_dir=tmp_path)
    cfg = _cfg(("vda", "/i/a.vhd", "vhd"))
    with pytest.raises(InvalidInput, match="vda: format vhd is not supported"):
        drv._argv(UUID, cfg, paused=False, incoming=False)
    argv = drv._argv(UUID, _cfg(("vda", "/i/a.raw", "raw"), ("vdb", "/i/b.qcow2", "qcow2")),
                     paused=False, incoming=False)
    assert '{"driver": "raw", "file": "vda-file", "node-name": "vda-raw", "read-only": false}' \
        in argv
    assert '{"driver": "qcow2", "file": "vdb-file", "node-name": "vdb-qcow2", ' \
        '"read-only": false}' in argv
