"""The LVM snapshot backend, driven through RecordingRunner: the exact lvm command lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from domsnap.errors import (
    BackendError,
    CommandFailed,
    Conflict,
    InvalidInput,
    Refused,
    SnapshotExists,
    UnknownSnapshot,
)
from workers.block import lvm as lvm_mod
from workers.block.lvm import LogicalVolume, Lvm
from workers.hostio.runner import Completed, RecordingRunner

GIB = 1 << 30
ORIGIN = LogicalVolume("vg0", "web-disk", "/dev/vg0/web-disk", 8 * GIB, None)
SNAP = "web-disk.ds.nightly"
SNAP_PATH = f"/dev/vg0/{SNAP}"
FIELDS = "vg_name,lv_name,lv_size,origin,lv_path,lv_attr"


def lvs(path: str) -> list[str]:
    return ["lvm", "lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|",
            "-o", FIELDS, path]


def row(lv: str, origin: str = "", attr: str = "", size: int = 8 * GIB) -> Completed:
    """lvs's answer for one LV (indented, as lvs prints with --noheadings)."""
    attr = attr or ("swi-a-s---" if origin else "owi-a-----")
    return RecordingRunner.result(f"  vg0|{lv}|{size}|{origin}|/dev/vg0/{lv}|{attr}\n")


def missing(lv: str = SNAP) -> Completed:
    return RecordingRunner.result(
        returncode=5, stderr=f'  Failed to find logical volume "vg0/{lv}"\n')


ORIGIN_ROW = row("web-disk", attr="owi-a-----")
SNAP_ROW = row(SNAP, origin="web-disk")
LVCREATE = ["lvm", "lvcreate", "--snapshot", "--name", SNAP, "--extents", "100%ORIGIN",
            "vg0/web-disk"]
MERGE = ["lvm", "lvconvert", "--merge", f"vg0/{SNAP}"]


# -- probe -----------------------------------------------------------------------


def test_probe_an_lv() -> None:
    run = RecordingRunner([row("web-disk", attr="-wi-ao----")])
    assert Lvm(run).probe("/dev/vg0/web-disk") == ORIGIN
    assert run.argvs == [lvs("/dev/vg0/web-disk")]


def test_probe_a_snapshot_and_a_mapper_path() -> None:
    run = RecordingRunner([SNAP_ROW])
    snap = Lvm(run).probe("/dev/mapper/vg0-web--disk.ds.nightly")
    assert snap == LogicalVolume("vg0", SNAP, SNAP_PATH, 8 * GIB, "web-disk")
    assert run.argvs == [lvs("/dev/mapper/vg0-web--disk.ds.nightly")]


@pytest.mark.parametrize("stderr", [
    '  Failed to find logical volume "vg0/nosuch"\n',
    '  Volume group "novg" not found\n  Cannot process volume group novg\n',
    '  "/dev/vg0/x": Invalid path for Logical Volume.\n',
])
def test_probe_of_a_device_that_is_no_lv_is_none(stderr: str) -> None:
    run = RecordingRunner([RecordingRunner.result(returncode=5, stderr=stderr)])
    assert Lvm(run).probe("/dev/vg0/nosuch") is None
    assert run.argvs == [lvs("/dev/vg0/nosuch")]


@pytest.mark.parametrize("path", [
    "/var/lib/xen/images/web.img", "disk.img", "", "-rf", "/dev/sda", "/dev/vg0",
    "/dev/disk/by-id/dm-name-vg0-web", "/dev/vg0/-lv", "/dev/../etc/passwd",
])
def test_probe_runs_nothing_for_paths_that_cannot_be_lvs(path: str) -> None:
    run = RecordingRunner([])
    assert Lvm(run).probe(path) is None
    assert run.calls == []


def test_probe_never_hands_a_regular_file_to_lvs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "web.img"
    image.write_bytes(b"\0" * 512)
    run = RecordingRunner([])
    assert Lvm(run).probe(str(image)) is None
    monkeypatch.setattr(lvm_mod, "_is_regular_file", lambda path: path == "/dev/shm/web")
    assert Lvm(run).probe("/dev/shm/web") is None
    assert run.calls == []


def test_lvm_binary_missing_is_command_failed_127() -> None:
    run = RecordingRunner(lambda call: CommandFailed(call.argv, 127, "lvm: binary not found"))
    with pytest.raises(CommandFailed) as info:
        Lvm(run).probe("/dev/vg0/web-disk")
    assert info.value.returncode == 127
    assert info.value.argv == lvs("/dev/vg0/web-disk")


def test_permission_failure_is_not_taken_for_a_missing_lv() -> None:
    stderr = ("  WARNING: Running as a non-root user. Functionality may be unavailable.\n"
              "  /run/lock/lvm/P_global:aux: open failed: Permission denied\n"
              '  Volume group "vg0" not found\n')
    run = RecordingRunner([RecordingRunner.result(returncode=5, stderr=stderr)])
    with pytest.raises(CommandFailed) as info:
        Lvm(run).probe("/dev/vg0/web-disk")
    assert info.value.returncode == 5


@pytest.mark.parametrize("stdout", [
    "", "  vg0|a|1|||-wi-a-----\n  vg0|b|1|||-wi-a-----\n", "  vg0|web-disk|lots|||x\n",
    "  vg0|-x|1|||-wi-a-----\n",
])
def test_unexpected_lvs_output_is_an_error(stdout: str) -> None:
    with pytest.raises(CommandFailed):
        Lvm(RecordingRunner([RecordingRunner.result(stdout)])).probe("/dev/vg0/web-disk")


def test_lvs_answering_for_another_lv_is_an_error() -> None:
    with pytest.raises(BackendError):
        Lvm(RecordingRunner([row("other")])).probe("/dev/vg0/web-disk")


# -- names -----------------------------------------------------------------------


def _hashed(name: str) -> bool:
    return re.search(r"\+[0-9a-f]{10}$", name) is not None


def test_plain_names_map_readably() -> None:
    lvm = Lvm(RecordingRunner([]))
    assert lvm.snapshot_name(ORIGIN, "nightly") == SNAP
    assert lvm.snapshot_path(ORIGIN, "nightly") == SNAP_PATH
    assert lvm.snapshot_name(ORIGIN, "2024-01-01_x.y") == "web-disk.ds.2024-01-01_x.y"


def test_colons_are_replaced_and_the_name_gets_a_hash() -> None:
    lvm = Lvm(RecordingRunner([]))
    colon = lvm.snapshot_name(ORIGIN, "daily:2024-01-01")
    assert colon.startswith("web-disk.ds.daily_2024-01-01+") and _hashed(colon)
    assert ":" not in colon
    assert colon == lvm.snapshot_name(ORIGIN, "daily:2024-01-01")  # deterministic
    assert colon != lvm.snapshot_name(ORIGIN, "daily_2024-01-01")
    assert lvm.snapshot_name(ORIGIN, "a:b") != lvm.snapshot_name(ORIGIN, "a_b")


def test_reserved_substrings_are_broken_up() -> None:
    lvm = Lvm(RecordingRunner([]))
    for name in ("x_tmeta", "a:rimage", "x_cdata_mlog"):
        snap = lvm.snapshot_name(ORIGIN, name)
        assert _hashed(snap) and not any(r in snap for r in lvm_mod._RESERVED), snap


def test_long_names_are_cut_to_fit_lvm_and_device_mapper() -> None:
    lvm = Lvm(RecordingRunner([]))
    long_origin = LogicalVolume("vg-0", "d" * 120, "/dev/vg-0/" + "d" * 120, GIB, None)
    names = {lvm.snapshot_name(o, n) for o in (ORIGIN, long_origin)
             for n in ("a" * 128, "a" * 127 + "b", "a" * 126 + "-b")}
    assert len(names) == 6
    for snap in names:
        assert _hashed(snap) and not snap.startswith("-")
        assert re.fullmatch(r"[A-Za-z0-9+_.-]{1,127}", snap)
    for n in ("a" * 128, "a" * 126 + "-b"):
        snap = lvm.snapshot_name(long_origin, n)
        assert len("vg--0") + 1 + len(snap) + snap.count("-") + len("-cow") <= 127


@pytest.mark.parametrize("name", ["", "a/b", "../x", "a b", "x" * 129, "a+b"])
def test_invalid_snapshot_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Lvm(RecordingRunner([])).snapshot_name(ORIGIN, name)
    assert info.value.field == "name"


def test_origin_names_are_checked() -> None:
    bad = LogicalVolume("vg0", "-rf", "/dev/vg0/-rf", GIB, None)
    with pytest.raises(InvalidInput):
        Lvm(RecordingRunner([])).create_snapshot(bad, "nightly")


# -- create ----------------------------------------------------------------------


def test_create_with_100_percent_origin() -> None:
    run = RecordingRunner([missing(), RecordingRunner.result(), SNAP_ROW])
    snap = Lvm(run).create_snapshot(ORIGIN, "nightly")
    assert snap == LogicalVolume("vg0", SNAP, SNAP_PATH, 8 * GIB, "web-disk")
    assert run.argvs == [lvs(SNAP_PATH), LVCREATE, lvs(SNAP_PATH)]


def test_create_with_an_absolute_size() -> None:
    run = RecordingRunner([missing(), RecordingRunner.result(), SNAP_ROW])
    Lvm(run, snapshot_size="10G", binary="/sbin/lvm").create_snapshot(ORIGIN, "nightly")
    assert run.argvs[1] == ["/sbin/lvm", "lvcreate", "--snapshot", "--name", SNAP,
                            "--size", "10G", "vg0/web-disk"]
    assert all(argv[0] == "/sbin/lvm" for argv in run.argvs)


@pytest.mark.parametrize("size", ["", "10", "100%", "-1G", "10G --yes", "50%ORIGINX"])
def test_bad_snapshot_sizes_are_refused(size: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Lvm(RecordingRunner([]), snapshot_size=size)
    assert info.value.field == "snapshot_size"


def test_create_when_the_snapshot_exists() -> None:
    run = RecordingRunner([SNAP_ROW])
    with pytest.raises(SnapshotExists):
        Lvm(run).create_snapshot(ORIGIN, "nightly")
    assert run.argvs == [lvs(SNAP_PATH)]


def test_create_when_an_unrelated_lv_has_the_name() -> None:
    run = RecordingRunner([row(SNAP)])
    with pytest.raises(Conflict) as info:
        Lvm(run).create_snapshot(ORIGIN, "nightly")
    assert not isinstance(info.value, SnapshotExists)
    assert run.argvs == [lvs(SNAP_PATH)]


def test_create_failure_is_the_runners_command_failed() -> None:
    err = RecordingRunner.result(returncode=5, stderr="  Insufficient free space\n")
    run = RecordingRunner([missing(), err])
    with pytest.raises(CommandFailed) as info:
        Lvm(run).create_snapshot(ORIGIN, "nightly")
    assert info.value.argv == LVCREATE
    assert len(run.calls) == 2


# -- remove ----------------------------------------------------------------------


def test_remove_a_snapshot() -> None:
    run = RecordingRunner([SNAP_ROW, RecordingRunner.result()])
    Lvm(run).remove(SNAP_PATH)
    assert run.argvs == [lvs(SNAP_PATH), ["lvm", "lvremove", "--yes", f"vg0/{SNAP}"]]


def test_remove_is_idempotent() -> None:
    run = RecordingRunner([missing()])
    Lvm(run).remove(SNAP_PATH)
    assert run.argvs == [lvs(SNAP_PATH)]
    # gone between the look and the removal: done all the same
    run = RecordingRunner([SNAP_ROW, missing()])
    Lvm(run).remove(SNAP_PATH)
    assert len(run.calls) == 2


def test_remove_refuses_an_origin_lv() -> None:
    run = RecordingRunner([ORIGIN_ROW])
    with pytest.raises(Refused):
        Lvm(run).remove("/dev/vg0/web-disk")
    assert run.argvs == [lvs("/dev/vg0/web-disk")]


def test_remove_refuses_a_merging_snapshot() -> None:
    run = RecordingRunner([row(SNAP, origin="web-disk", attr="Swi-a-s---")])
    with pytest.raises(Refused):
        Lvm(run).remove(SNAP_PATH)
    assert len(run.calls) == 1


@pytest.mark.parametrize("path", ["/var/lib/xen/images/web.img", "-rf", "/dev/sda"])
def test_remove_of_a_path_that_cannot_be_an_lv_is_invalid(path: str) -> None:
    run = RecordingRunner([])
    with pytest.raises(InvalidInput):
        Lvm(run).remove(path)
    assert run.calls == []


# -- revert ----------------------------------------------------------------------


def test_revert_merges_then_takes_the_snapshot_again() -> None:
    run = RecordingRunner([SNAP_ROW, ORIGIN_ROW, RecordingRunner.result(), missing(),
                           RecordingRunner.result(), SNAP_ROW])
    Lvm(run).revert(ORIGIN, "nightly")
    assert run.argvs == [lvs(SNAP_PATH), lvs("/dev/vg0/web-disk"), MERGE, lvs(SNAP_PATH),
                         LVCREATE, lvs(SNAP_PATH)]


def test_a_failed_merge_stops_the_revert() -> None:
    err = RecordingRunner.result(returncode=5, stderr="  Unable to merge invalid snapshot\n")
    run = RecordingRunner([SNAP_ROW, ORIGIN_ROW, err])
    with pytest.raises(CommandFailed) as info:
        Lvm(run).revert(ORIGIN, "nightly")
    assert info.value.argv == MERGE
    assert run.argvs[-1] == MERGE and len(run.calls) == 3


@pytest.mark.parametrize(("origin_attr", "snap_attr", "why"), [
    ("owi-ao----", "swi-a-s---", "is open"),
    ("owi-------", "swi---s---", "not active"),
    ("owi-a-----", "swi-ao----", "snapshot web-disk.ds.nightly is open"),
    ("owi-a-----", "swi-I-s---", "invalid"),
    ("Owi-a-----", "Swi-a-s---", "pending"),
    ("owi", "swi", "cannot tell"),
])
def test_revert_refuses_before_touching_anything(origin_attr: str, snap_attr: str,
                                                 why: str) -> None:
    run = RecordingRunner([row(SNAP, origin="web-disk", attr=snap_attr),
                           row("web-disk", attr=origin_attr)])
    with pytest.raises(Refused, match=why):
        Lvm(run).revert(ORIGIN, "nightly")
    assert run.argvs == [lvs(SNAP_PATH), lvs("/dev/vg0/web-disk")]


def test_revert_to_a_missing_snapshot() -> None:
    run = RecordingRunner([missing()])
    with pytest.raises(UnknownSnapshot):
        Lvm(run).revert(ORIGIN, "nightly")
    run = RecordingRunner([row(SNAP, origin="other")])
    with pytest.raises(UnknownSnapshot):
        Lvm(run).revert(ORIGIN, "nightly")
    assert len(run.calls) == 1


def test_a_delayed_merge_is_reported_and_nothing_more_runs() -> None:
    run = RecordingRunner([SNAP_ROW, ORIGIN_ROW, RecordingRunner.result(
        "  Delaying merge since origin is open.\n"), SNAP_ROW])
    with pytest.raises(BackendError, match="delayed"):
        Lvm(run).revert(ORIGIN, "nightly")
    assert run.argvs[-1] == lvs(SNAP_PATH) and len(run.calls) == 4


def test_a_failed_retake_after_the_merge_says_so() -> None:
    err = RecordingRunner.result(returncode=5, stderr="  Insufficient free space\n")
    run = RecordingRunner([SNAP_ROW, ORIGIN_ROW, RecordingRunner.result(), missing(), err])
    with pytest.raises(CommandFailed) as info:
        Lvm(run).revert(ORIGIN, "nightly")
    assert info.value.argv == LVCREATE
    assert any("reverted" in note for note in info.value.__notes__)


def test_every_call_gets_the_timeout() -> None:
    run = RecordingRunner([SNAP_ROW, ORIGIN_ROW, RecordingRunner.result(), missing(),
                           RecordingRunner.result(), SNAP_ROW, SNAP_ROW,
                           RecordingRunner.result()])
    lvm = Lvm(run, timeout=42.0)
    lvm.revert(ORIGIN, "nightly")
    lvm.remove(SNAP_PATH)
    assert len(run.calls) == 8
    assert all(c.timeout == 42.0 and c.check and c.input is None for c in run.calls)
