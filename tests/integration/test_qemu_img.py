"""QemuImg against the real qemu-img on real qcow2 images; data checked with qemu-io."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from domsnap.errors import CommandFailed, InvalidInput, Refused
from workers.block.qemu_img import QemuImg
from workers.hostio.runner import RecordingRunner, SubprocessRunner

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def _binaries() -> None:
    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: these tests need it")


@pytest.fixture
def img() -> QemuImg:
    return QemuImg(SubprocessRunner(), timeout=60)


def write(path: Path, pattern: int, offset: str = "0") -> None:
    SubprocessRunner()(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x{pattern:02x} {offset} 64k", str(path)],
        timeout=30,
    )


def holds(path: Path, pattern: int, offset: str = "0") -> bool:
    """True if the 64 KiB at ``offset`` all read as ``pattern`` (qemu-io exits 1 otherwise)."""
    done = SubprocessRunner()(
        ["qemu-io", "-f", "qcow2", "-c", f"read -P 0x{pattern:02x} {offset} 64k", str(path)],
        timeout=30,
        check=False,
    )
    return done.returncode == 0 and "verification failed" not in done.stdout


def _locked(path: Path) -> bool:
    """True if some process holds a lock on ``path`` (read from /proc/locks, no lock taken)."""
    inode = str(path.stat().st_ino)
    with open("/proc/locks") as locks:
        return any(len(f) > 5 and f[5].rsplit(":", 1)[-1] == inode for f in map(str.split, locks))


def test_create_and_info(img: QemuImg, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    img.create(disk, size_bytes=16 * MiB)
    info = img.info(disk)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 16 * MiB
    assert img.backing_file(disk) is None
    assert img.snapshot_list(disk) == []


def test_create_refuses_to_overwrite(img: QemuImg, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    img.create(disk, size_bytes=MiB)
    write(disk, 0x11)
    with pytest.raises(Refused) as info:
        img.create(disk, size_bytes=MiB)
    assert str(disk) in str(info.value)
    assert holds(disk, 0x11), "the existing image was touched"


def test_create_failure_leaves_no_file(img: QemuImg, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    with pytest.raises(CommandFailed):
        img.create(overlay, backing=str(tmp_path / "missing.qcow2"))
    assert not overlay.exists()


def test_create_in_a_missing_directory_is_invalid_input(img: QemuImg, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        img.create(tmp_path / "nodir" / "disk.qcow2", size_bytes=MiB)
    assert info.value.field == "path"


def test_create_needs_a_size_without_backing(img: QemuImg, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        img.create(tmp_path / "disk.qcow2")
    assert not (tmp_path / "disk.qcow2").exists()


def test_overlay_chain_and_backing_file(img: QemuImg, tmp_path: Path) -> None:
    base, mid, top = (tmp_path / n for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
    img.create(base, size_bytes=8 * MiB)
    img.create(mid, backing=str(base))
    img.create(top, backing="mid.qcow2")  # relative: resolved next to the overlay
    assert img.backing_file(base) is None
    assert img.backing_file(mid) == str(base)
    assert img.backing_file(top) == str(mid)
    chain = img.info(top, backing_chain=True)
    assert isinstance(chain, list)
    assert [Path(layer["filename"]).name for layer in chain] == [
        "top.qcow2",
        "mid.qcow2",
        "base.qcow2",
    ]
    assert chain[0]["virtual-size"] == 8 * MiB
    write(base, 0x22)
    assert holds(top, 0x22), "data of the base is visible through the chain"


def test_internal_snapshots_create_list_apply_delete(img: QemuImg, tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    img.create(disk, size_bytes=4 * MiB)
    write(disk, 0xA1)
    img.snapshot_create(disk, "first")
    write(disk, 0xB2)
    img.snapshot_create(disk, "second")
    write(disk, 0xC3)
    assert img.snapshot_list(disk) == ["first", "second"]
    assert img.snapshot_list(disk, force_share=True) == ["first", "second"]

    img.snapshot_apply(disk, "first")
    assert holds(disk, 0xA1)
    img.snapshot_apply(disk, "second")
    assert holds(disk, 0xB2)

    img.snapshot_delete(disk, "first")
    assert img.snapshot_list(disk) == ["second"]
    assert holds(disk, 0xB2), "deleting a snapshot does not change the active data"
    with pytest.raises(CommandFailed) as info:
        img.snapshot_apply(disk, "first")
    assert info.value.returncode == 1


def test_commit_writes_the_overlay_into_its_backing(img: QemuImg, tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    img.create(base, size_bytes=4 * MiB)
    write(base, 0x01)
    img.create(top, backing=str(base))
    write(top, 0x02)
    assert holds(base, 0x01)
    img.commit(top)
    assert holds(base, 0x02)


def test_rebase_safe_to_standalone_keeps_data(img: QemuImg, tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    img.create(base, size_bytes=4 * MiB)
    write(base, 0x33)
    img.create(top, backing=str(base))
    write(top, 0x44, "64k")
    img.rebase(top, None)
    assert img.backing_file(top) is None
    base.unlink()
    assert holds(top, 0x33) and holds(top, 0x44, "64k")


def test_rebase_safe_onto_another_backing_keeps_data(img: QemuImg, tmp_path: Path) -> None:
    old, new, top = (tmp_path / n for n in ("old.qcow2", "new.qcow2", "top.qcow2"))
    img.create(old, size_bytes=4 * MiB)
    write(old, 0x55)
    img.create(new, size_bytes=4 * MiB)
    write(new, 0x66)
    img.create(top, backing=str(old))
    img.rebase(top, str(new))
    assert img.backing_file(top) == str(new)
    assert holds(top, 0x55), "safe rebase copied what differs into the overlay"


def test_rebase_unsafe_after_move_keeps_data(img: QemuImg, tmp_path: Path) -> None:
    base, moved, top = (tmp_path / n for n in ("base.qcow2", "moved.qcow2", "top.qcow2"))
    img.create(base, size_bytes=4 * MiB)
    write(base, 0x77)
    img.create(top, backing=str(base))
    write(top, 0x88, "64k")
    os.rename(base, moved)
    img.rebase(top, str(moved), unsafe=True)
    assert img.backing_file(top) == str(moved)
    assert holds(top, 0x77) and holds(top, 0x88, "64k")


def test_missing_file_error_carries_argv_rc_stderr(img: QemuImg, tmp_path: Path) -> None:
    missing = tmp_path / "missing.qcow2"
    with pytest.raises(CommandFailed) as info:
        img.info(missing)
    err = info.value
    assert err.argv[0] == "qemu-img" and err.argv[-1] == str(missing)
    assert err.returncode == 1
    assert "No such file or directory" in err.stderr
    assert "No such file or directory" in str(err)


def test_snapshot_of_an_image_in_use_fails_on_the_lock(img: QemuImg, tmp_path: Path) -> None:
    """An image another process holds open (qemu-io here) cannot be snapshotted."""
    disk = tmp_path / "disk.qcow2"
    img.create(disk, size_bytes=MiB)
    holder = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", "-c", "sleep 20000", str(disk)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _locked(disk):  # until the holder has the image open and locked
            assert holder.poll() is None, "qemu-io could not open the image"
            assert time.monotonic() < deadline, "qemu-io never locked the image"
            time.sleep(0.02)
        time.sleep(0.2)  # QEMU locks one byte per permission, in quick succession
        with pytest.raises(CommandFailed) as info:
            img.snapshot_create(disk, "s")
        assert 'Failed to get "write" lock' in info.value.stderr
        assert img.snapshot_list(disk, force_share=True) == []
    finally:
        holder.kill()
        holder.wait()
    img.snapshot_create(disk, "s")
    assert img.snapshot_list(disk) == ["s"]


def test_snapshot_names_the_format_instead_of_probing(img: QemuImg, tmp_path: Path) -> None:
    raw = tmp_path / "disk,with,commas.img"
    img.create(raw, size_bytes=MiB, fmt="raw")
    with pytest.raises(CommandFailed) as info:
        img.snapshot_create(raw, "s")
    assert "not in qcow2 format" in info.value.stderr
    disk = tmp_path / "a,b.qcow2"
    img.create(disk, size_bytes=MiB)
    img.snapshot_create(disk, "s")
    assert img.snapshot_list(disk) == ["s"]


# -- argv shapes (no qemu-img run) ---------------------------------------------


def test_argv_always_names_formats(tmp_path: Path) -> None:
    rec = RecordingRunner(
        [RecordingRunner.result('{"snapshots": [{"name": "a"}], "backing-filename": "b.qcow2"}')]
        * 3
        + [RecordingRunner.result()] * 8
    )
    img = QemuImg(rec, binary="/usr/bin/qemu-img", timeout=9)
    disk = tmp_path / "d.qcow2"
    assert img.snapshot_list(disk, force_share=True) == ["a"]
    assert img.backing_file(disk) == str(tmp_path / "b.qcow2")
    img.info(disk, backing_chain=True)
    img.create(tmp_path / "new.qcow2", backing="base.qcow2")
    img.create(tmp_path / "raw.img", size_bytes=MiB, fmt="raw")
    img.snapshot_create(disk, "n")
    img.snapshot_apply(disk, "n")
    img.snapshot_delete(disk, "n")
    img.commit(disk)
    img.rebase(disk, None)
    img.rebase(disk, "other.qcow2", unsafe=True)
    d, q = str(disk), "/usr/bin/qemu-img"
    opts = f"driver=qcow2,file.driver=file,file.filename={d}"
    assert rec.argvs == [
        [q, "info", "--output=json", "-f", "qcow2", "-U", d],
        [q, "info", "--output=json", "-f", "qcow2", d],
        [q, "info", "--output=json", "-f", "qcow2", "--backing-chain", d],
        [q, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
         str(tmp_path / "new.qcow2")],
        [q, "create", "-q", "-f", "raw", str(tmp_path / "raw.img"), str(MiB)],
        [q, "snapshot", "-q", "--image-opts", "-c", "n", opts],
        [q, "snapshot", "-q", "--image-opts", "-a", "n", opts],
        [q, "snapshot", "-q", "--image-opts", "-d", "n", opts],
        [q, "commit", "-q", "-f", "qcow2", d],
        [q, "rebase", "-q", "-f", "qcow2", "-b", "", d],
        [q, "rebase", "-q", "-f", "qcow2", "-u", "-b", "other.qcow2", "-F", "qcow2", d],
    ]  # fmt: skip
    assert {c.timeout for c in rec.calls} == {9}


def test_a_path_that_looks_like_an_option_stays_a_path() -> None:
    rec = RecordingRunner()
    QemuImg(rec).commit("-x.qcow2")
    assert rec.argvs[-1][-1] == "./-x.qcow2"
    QemuImg(rec).snapshot_create("-x,y.qcow2", "n")
    assert rec.argvs[-1][-1] == "driver=qcow2,file.driver=file,file.filename=./-x,,y.qcow2"
