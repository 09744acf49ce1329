"""The save/restore window marks: a live window is left alone, one its process left
is restored from its file exactly once, and nothing but a settled mark goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domsnap.errors import CommandFailed
from workers.drivers.xlwindow import WindowMarks

U = "6bc64390-46de-4e8e-a33c-1b7e74a8a188"


class Hypervisor:
    """What the marks' owner sees: which domains run, and the restores asked for."""

    def __init__(self, *, up: bool = False, fail: bool = False) -> None:
        self.up = up
        self.fail = fail
        self.restored: list[tuple[str, Path, bool]] = []

    def running(self, uuid: str) -> bool:
        return self.up

    def restore(self, uuid: str, file: Path, paused: bool) -> None:
        if self.fail:
            raise CommandFailed(["xl", "restore"], 1, "libxl: error", "")
        self.restored.append((uuid, file, paused))
        self.up = True


def _left_by_dead_window(marks: WindowMarks, file: Path, *, phase: str, keep: bool) -> None:
    with marks.held(U, file=file, paused=True, keep=keep) as mark:
        mark.phase(phase)
    # the block ended without "done": as a killed process would, the mark stays unlocked


def test_a_held_window_is_left_alone_and_a_done_one_leaves_nothing(tmp_path: Path) -> None:
    marks = WindowMarks(tmp_path / "w")
    hv = Hypervisor()
    with marks.held(U, file=tmp_path / "s.save", paused=False, keep=False) as mark:
        mark.phase("saved")
        assert marks.restore_orphans(blocking=False, running=hv.running,
                                     restore=hv.restore) == 0
        assert hv.restored == [] and marks.path(U).exists()
        mark.phase("done")
    assert list((tmp_path / "w").iterdir()) == []


@pytest.mark.parametrize("phase", ["saved", "restoring"])
def test_a_dead_windows_domain_is_restored_once(tmp_path: Path, phase: str) -> None:
    marks = WindowMarks(tmp_path / "w")
    save = tmp_path / "s.save"
    save.write_bytes(b"Xen saved domain")
    _left_by_dead_window(marks, save, phase=phase, keep=False)
    hv = Hypervisor()
    assert marks.restore_orphans(blocking=True, running=hv.running, restore=hv.restore) == 0
    assert hv.restored == [(U, save, True)]
    assert not save.exists() and not marks.path(U).exists()  # the scratch file went too
    assert marks.restore_orphans(blocking=True, running=hv.running, restore=hv.restore) == 0
    assert len(hv.restored) == 1


def test_a_snapshots_memory_file_is_kept(tmp_path: Path) -> None:
    marks = WindowMarks(tmp_path / "w")
    mem = tmp_path / "m1.save"
    mem.write_bytes(b"Xen saved domain")
    _left_by_dead_window(marks, mem, phase="saved", keep=True)
    hv = Hypervisor()
    marks.restore_orphans(blocking=False, running=hv.running, restore=hv.restore)
    assert hv.restored and mem.exists()  # the create's rollback decides about it


def test_a_failed_restore_keeps_the_mark_and_the_file(tmp_path: Path) -> None:
    marks = WindowMarks(tmp_path / "w")
    save = tmp_path / "s.save"
    save.write_bytes(b"Xen saved domain")
    _left_by_dead_window(marks, save, phase="saved", keep=False)
    assert marks.restore_orphans(blocking=False, running=Hypervisor().running,
                                 restore=Hypervisor(fail=True).restore) == 1
    assert save.exists() and marks.path(U).exists()
    hv = Hypervisor()
    assert marks.restore_orphans(blocking=False, running=hv.running, restore=hv.restore) == 0
    assert hv.restored == [(U, save, True)]


def test_a_restore_cut_short_on_a_running_domain_keeps_the_memory_image(
        tmp_path: Path) -> None:
    """The domain exists after an ``xl restore`` that died: it may be half-restored,
    so its memory image (the only whole copy of the guest) is not removed."""
    marks = WindowMarks(tmp_path / "w")
    save = tmp_path / "s.save"
    save.write_bytes(b"Xen saved domain")
    _left_by_dead_window(marks, save, phase="restoring", keep=False)
    hv = Hypervisor(up=True)
    assert marks.restore_orphans(blocking=False, running=hv.running, restore=hv.restore) == 0
    assert hv.restored == [] and save.exists() and not marks.path(U).exists()


def test_a_save_that_died_leaves_a_domain_that_still_exists(tmp_path: Path) -> None:
    marks = WindowMarks(tmp_path / "w")
    partial = tmp_path / "s.save"
    partial.write_bytes(b"Xen sav")
    _left_by_dead_window(marks, partial, phase="saving", keep=False)
    hv = Hypervisor(up=True)
    assert marks.restore_orphans(blocking=False, running=hv.running, restore=hv.restore) == 0
    assert hv.restored == [] and not partial.exists()


def test_a_mark_is_locked_by_its_process_until_it_dies(tmp_path: Path) -> None:
    """Another process's open window is seen as open; once that process is killed,
    the same mark is an orphan."""
    root = tmp_path / "w"
    code = (f"import sys, time; sys.path.insert(0, {str(Path.cwd())!r})\n"
            "from pathlib import Path\nfrom workers.drivers.xlwindow import WindowMarks\n"
            f"with WindowMarks(Path({str(root)!r})).held({U!r}, file=Path('/x.save'), "
            "paused=False, keep=False) as m:\n"
            "    m.phase('saved'); print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        marks = WindowMarks(root)
        with marks.orphaned(blocking=False) as found:
            assert found == []
    finally:
        proc.kill()
        proc.wait()
    with marks.orphaned(blocking=False) as found:
        assert [m.body["phase"] for m in found] == ["saved"]
        assert json.loads(os.pread(found[0].fd, 16384, 0))["uuid"] == U


def test_a_mark_that_is_not_domsnaps_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    (root / f"{U}.json").write_text("not json")
    hv = Hypervisor()
    assert WindowMarks(root).restore_orphans(blocking=False, running=hv.running,
                                             restore=hv.restore) == 0
    assert hv.restored == [] and list(root.iterdir()) == []


def test_count_sees_open_and_dead_windows_alike(tmp_path: Path) -> None:
    """The guard stays while a mark exists, locked or not: a worker killed a moment
    ago may leave its window locked by a child for a while (then not yet orphaned)."""
    marks = WindowMarks(tmp_path / "w")
    assert marks.count() == 0
    save = tmp_path / "s.save"
    save.write_bytes(b"Xen saved domain")
    with marks.held(U, file=save, paused=False, keep=False) as mark:
        mark.phase("saved")
        assert marks.count() == 1  # open: restore_orphans leaves it alone, count sees it
        assert marks.restore_orphans(blocking=False, running=Hypervisor().running,
                                     restore=Hypervisor().restore) == 0
        mark.phase("done")
    assert marks.count() == 0
    _left_by_dead_window(marks, save, phase="saved", keep=False)
    assert marks.count() == 1
    hv = Hypervisor()
    marks.restore_orphans(blocking=False, running=hv.running, restore=hv.restore)
    assert marks.count() == 0 and hv.restored
