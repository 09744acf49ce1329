"""The pure parts of the xl driver's live memory strategy (workers/drivers/xllive.py):
which strategy a snapshot gets and why, and the pause window read from xl's -vvv
lines (timestamped as they came) or, without them, from the receiver's report."""

from __future__ import annotations

from workers.drivers.base import DiskOp
from workers.drivers.xllive import choose, pause_window
from workers.drivers.xlreceive import Report


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
