"""Atomic writes from several writers at once: a worker's heartbeat process and its
pool processes write the same registry entry (seen failing in CI when both used
one fixed temp name: one renamed the other's file away)."""

from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workers.hostio.fsutil import atomic_write


def test_concurrent_writers_of_one_file_never_fail(tmp_path: Path) -> None:
    path = tmp_path / "d" / "entry.json"

    def write(i: int) -> None:
        for j in range(100):
            atomic_write(path, json.dumps({"writer": i, "n": j}))

    with ThreadPoolExecutor(max_workers=4) as pool:
        for f in [pool.submit(write, i) for i in range(4)]:
            f.result()  # re-raises a FileNotFoundError from os.replace, if any
    assert json.loads(path.read_text())["n"] == 99  # whole, never torn
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["entry.json"]  # no temp left


def test_mode_is_kept_as_asked(tmp_path: Path) -> None:
    atomic_write(tmp_path / "x", "data", mode=0o640)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o640
    assert (tmp_path / "x").read_text() == "data"
