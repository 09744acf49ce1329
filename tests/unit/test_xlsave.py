"""Finding an ``xl save`` that outlived its worker (workers/drivers/xlsave.py)."""

from __future__ import annotations

from pathlib import Path

from workers.drivers.xlsave import running_saves, save_target, wait_for_saves


def test_save_target_reads_xls_argv() -> None:
    assert save_target(["xl", "save", "-p", "3", "/s/a.save"], "xl") == ("3", "/s/a.save")
    assert save_target(["/usr/sbin/xl", "-v", "save", "3", "/f", "/c.cfg"], "xl") == \
        ("3", "/f")
    # the stand-in: a script run by its interpreter
    assert save_target(["python3", "/t/xlstandin/xl", "save", "-c", "7", "/f"], "xl") == \
        ("7", "/f")
    assert save_target(["xl", "restore", "/c.cfg", "/f"], "xl") is None
    assert save_target(["xl", "save", "3"], "xl") is None
    assert save_target(["vim", "save", "3", "/f"], "xl") is None


def _proc(tmp_path: Path, procs: dict[int, list[str]]) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "uptime").write_text("1000.0 10.0\n")
    for pid, argv in procs.items():
        d = root / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        # state S, starttime (field 22) at 999 s of uptime in clock ticks of 100 Hz
        (d / "stat").write_text(f"{pid} (xl) S " + " ".join(["0"] * 18) + " 99900 0\n")
    (root / "self").mkdir()
    return root


def test_running_saves_by_domid_or_file(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {10: ["xl", "save", "-p", "3", "/s/a.save"],
                            11: ["xl", "save", "4", "/s/b.save"],
                            12: ["xl", "list"]})
    assert running_saves("xl", domid=3, proc=proc) == [10]
    assert running_saves("xl", file=Path("/s/b.save"), proc=proc) == [11]
    assert running_saves("xl", domid=9, proc=proc) == []


def test_wait_for_saves_returns_at_once_when_none_runs(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {12: ["xl", "list"]})
    assert wait_for_saves("xl", domid=3, timeout=600, proc=proc) == 0


def test_a_live_snapshots_migrate_and_receiver_count_as_saves(tmp_path: Path) -> None:
    rune = "/usr/bin/python3 -m workers.drivers.xlreceive /st/xl/live/u/domid-5.ab.request.json"
    assert save_target(["xl", "-vvv", "migrate", "-s", rune, "5", "domsnap"], "xl") == \
        ("5", "")
    assert save_target(["xl", "migrate", "-C", "/c.cfg", "-s", "x", "-e", "6", "h"], "xl") == \
        ("6", "")
    assert save_target(["xl", "migrate", "-s", "x", "6"], "xl") is None  # no HOST
    proc = _proc(tmp_path, {
        20: ["python3", "/t/xlstandin/xl", "-vvv", "migrate", "-s", rune, "5", "domsnap"],
        21: ["/usr/bin/python3", "-m", "workers.drivers.xlreceive",
             "/st/xl/live/u/domid-5.ab.request.json", "domsnap", "xl", "migrate-receive"],
        22: ["/usr/bin/python3", "-m", "workers.drivers.xlreceive", "/elsewhere/req.json"],
        23: ["xl", "migrate-receive"]})
    assert running_saves("xl", domid=5, proc=proc) == [20, 21]
    assert running_saves("xl", domid=6, proc=proc) == []
    assert running_saves("xl", file=Path("/s/a.save"), proc=proc) == []
