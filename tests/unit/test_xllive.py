"""The pure parts of the xl driver's live memory strategy (workers/drivers/xllive.py):
which strategy a snapshot gets and why, and the pause window read from xl's -vvv
lines (timestamped as they came) or, without them, from the receiver's report."""

from __future__ import annotations

import shlex
from pathlib import Path

from tests.unit.test_xl_driver import LVM_DISK, UUID, FakeDom0, _driver, _seen
from workers.drivers.base import DiskOp
from workers.drivers.xllive import choose, pause_window
from workers.drivers.xlreceive import Report
from workers.hostio.runner import Call, Completed, RecordingRunner


def op(vdev: str, strategy: str) -> DiskOp:
    return DiskOp(vdev=vdev, path=f"/i/{vdev}", format="qcow2", type="internal",
                  strategy=strategy)


def test_live_only_for_a_running_domain_with_every_disk_through_qmp() -> None:
    assert choose("live", "running", [op("xvda", "qmp"), op("xvdb", "qmp")]) is None
    assert choose("live", "running", []) is None
    why = choose("save", "running", [op("xvda", "qmp")])
    assert why is not None and "DOMSNAP_XL_MEMORY_STRATEGY" in why and "'save'" in why
    why = choose("live", "paused", [op("xvda", "qmp")])
    assert why is not None and "paused" in why
    why = choose("live", "running", [op("xvda", "qmp"), op("xvdb", "lvm"),
                                     op("xvdc", "save-restore")])
    assert why is not None and "xvdb (lvm)" in why and "xvdc (save-restore)" in why
    assert "xvda" not in why


def test_the_pause_window_from_xls_lines() -> None:
    lines = [(10.0, "libxl: debug: libxl_domain.c:528:libxl_domain_suspend: ao: create"),
             (12.0, "libxl: debug: libxl_dom_suspend.c:350:suspend_common_wait_guest_check:"
                    " Domain 3:guest has suspended"),
             (12.3, "libxl: debug: libxl_event.c:2064:libxl__ao_complete: ao: complete, rc=0"),
             (12.5, "Migration failed, resuming at sender."),
             (12.6, "libxl: debug: libxl_domain.c:621:libxl_domain_resume: ao: create"),
             (12.75, "libxl: debug: libxl_event.c:2064:libxl__ao_complete: ao: complete, "
                     "rc=0")]
    # the suspend's own AO completing (12.3) is not the resume: only one after the line
    assert pause_window(lines, Report(), exited_at=13.0) == 750.0


def test_without_xls_lines_the_receiver_and_xls_exit_bound_it() -> None:
    rep = Report(round_ends=[5.0, 7.0, 7.5], times={"stream": 1.0})
    assert pause_window([], rep, exited_at=8.0) == 1000.0  # from the next-to-last round
    rep = Report(round_ends=[5.0], times={"stream": 1.0})
    assert pause_window([(7.9, "Migration failed, resuming at sender.")], rep,
                        exited_at=8.0) == 7000.0  # one round: from the stream's start


LOGDIRTY = ("xc: error: Failed to enable logdirty: 95,22,0 (22 = Invalid argument): "
            "Internal error\nMigration failed, failed to suspend at sender.\n")


class NoLogDirty(FakeDom0):
    """A dom0 whose hypervisor has no PV shadow paging: ``xl migrate`` is refused at
    once, the guest untouched (Debian bookworm-security's Xen 4.17.7+13)."""

    def answer(self, call: Call) -> Completed | BaseException:
        if call.argv[1:3] == ["-vvv", "migrate"]:
            assert call.outlive and not call.check
            return RecordingRunner.result(returncode=1, stderr=LOGDIRTY)
        return super().answer(call)


def test_a_refused_log_dirty_falls_back_to_xl_save_in_the_same_call(tmp_path: Path) -> None:
    dom0 = NoLogDirty([LVM_DISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    mem = tmp_path / "snaps" / "s1.save"
    dom0.runner.calls.clear()
    res = drv.capture(UUID, name="s1", memory_file=mem, disks=[],
                      progress=lambda step, msg: None)
    seen = _seen(dom0)
    assert seen[0][:4] == ["xl", "-vvv", "migrate", "-s"]
    rune = shlex.split(seen[0][4])
    assert rune[1:3] == ["-m", "workers.drivers.xlreceive"]
    assert seen[0][5:] == ["3", "domsnap"]
    assert seen[1:] == [["xl", "save", "-p", "3", str(mem)], ["xl", "unpause", "3"]]
    assert res.memory_strategy == "save"
    assert res.memory_fallback is not None and "Failed to enable logdirty" in \
        res.memory_fallback
    assert mem.read_bytes().startswith(b"Xen saved domain")  # xl save's file, not a stub
    assert list((tmp_path / "state" / "xl" / "live").rglob("*.json")) == []


def test_the_pause_window_from_the_real_xl_stderr() -> None:
    """Real `xl -vvv migrate` stderr from Xen 4.17.5 (tests/fixtures/xl/migrate-vvv.stderr.txt),
    one line a second: the window runs from "guest has suspended" to the resume's AO
    completing after "resuming at sender" (not the suspend's own AO, which completes
    before)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "fixtures" / "xl"
            / "migrate-vvv.stderr.txt").read_text()
    lines = [(float(i), ln) for i, ln in enumerate(text.splitlines())]
    at = {key: next(i for i, ln in enumerate(text.splitlines()) if key in ln)
          for key in ("guest has suspended", "resuming at sender")}
    done = next(i for i, ln in enumerate(text.splitlines())
                if i > at["resuming at sender"] and "libxl__ao_complete" in ln)
    assert pause_window(lines, Report(), exited_at=1e6) == (done - at["guest has suspended"]) * 1000
