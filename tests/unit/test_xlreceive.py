"""The live-snapshot receiver (workers/drivers/xlreceive.py) as xl runs it: a real
process, the stream on its stdin, the reply channel on its stdout. It writes xl's
banner, never the "ready" message, keeps the stream 0600 and reports what happened;
on every failure it removes the file and closes the channel."""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_xlstream import LIBXL_HDR, stream
from workers.drivers.xlreceive import BANNER, READY, read_report, rune

ROOT = Path(__file__).resolve().parents[2]


def request(tmp_path: Path, **over: Any) -> Path:
    body: dict[str, Any] = {
        "memory_file": str(tmp_path / "snap" / "s1.save"), "qmp_socket": "/nonexistent",
        "actions": [], "budget": 1 << 30, "read_timeout": 10.0,
        "report": str(tmp_path / "report.json")}
    body.update(over)
    path = tmp_path / "domid-3.t.request.json"
    path.write_text(json.dumps(body))
    path.chmod(0o600)
    return path


def run(req: Path, data: bytes, *, close_early: bool = False,
        extra_env: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """Start the receiver the way xl does (``sh -c "exec RUNE HOST xl migrate-receive"``),
    read the banner, send ``data``, read the reply channel to its end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    proc = subprocess.Popen(["sh", "-c", f"exec {rune(req)} domsnap xl migrate-receive"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stderr is not None
    banner = proc.stdout.read(len(BANNER))
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
        if close_early:
            proc.stdin.close()
    except BrokenPipeError:
        pass
    reply = proc.stdout.read()  # EOF: the receiver closed its reply channel
    if not proc.stdin.closed:  # as xl does, the sender's end stays open until then
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    err = proc.stderr.read()
    proc.wait(timeout=60)
    return proc.returncode, banner + reply, err.decode()


def test_rune_quotes_every_path(tmp_path: Path) -> None:
    odd = tmp_path / "a dir; rm -rf x" / "r.json"
    words = shlex.split(rune(odd))
    assert words == [sys.executable, "-m", "workers.drivers.xlreceive", str(odd)]


def test_a_whole_stream_is_kept_and_reported(tmp_path: Path) -> None:
    raw = stream([[0, 1, 2], [3, 4], [1], [2]])
    req = request(tmp_path)
    t0 = time.time()
    code, out, err = run(req, raw)
    assert code == 0, err
    assert out == BANNER  # the banner, then EOF: never the ready message
    assert READY not in out
    mem = tmp_path / "snap" / "s1.save"
    assert mem.read_bytes() == raw
    assert mem.stat().st_mode & 0o777 == 0o600
    assert mem.parent.stat().st_mode & 0o777 == 0o700
    rep = read_report(tmp_path / "report.json")
    assert rep is not None and rep.ok and rep.end_received and rep.fsynced
    assert rep.transaction_done and rep.transaction_ms is None  # no disks: no QMP at all
    assert (rep.bytes, rep.page_data_records, rep.pages, rep.rounds) == (len(raw), 4, 7, 2)
    assert rep.records["libxc:PAGE_DATA"] == 4
    times = rep.times
    assert t0 <= times["started"] <= times["stream"] <= times["end"] <= times["fsynced"] \
        <= times["transaction"] <= times["closed"] <= time.time()
    assert len(rep.round_starts) == 2 and rep.round_ends[0] <= rep.round_starts[1]
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("case", "words"), [
    ("budget", "budget"), ("truncated", "truncated"),
    ("corrupt", "expected libxl stream version 2"),
    ("qmp", "does not exist"), ("timeout", "no stream data for 0.5s")])
def test_every_failure_removes_the_file_and_closes_the_channel(
        tmp_path: Path, case: str, words: str) -> None:
    raw = stream([[0, 1], [1]])
    over: dict[str, Any] = {}
    data = raw
    close_early = False
    if case == "budget":
        over["budget"] = len(raw) // 2
    elif case == "truncated":
        data, close_early = raw[: len(raw) - 100], True
    elif case == "corrupt":
        data = raw.replace(LIBXL_HDR, LIBXL_HDR[:8] + struct.pack(">II", 3, 0))
    elif case == "qmp":
        over["actions"] = [{"type": "blockdev-snapshot-internal-sync",
                            "data": {"device": "xvda-qcow2", "name": "s1"}}]
        over["qmp_socket"] = str(tmp_path / "no-such-socket")
    elif case == "timeout":
        data, over["read_timeout"] = raw[:100], 0.5
    code, out, err = run(request(tmp_path, **over), data, close_early=close_early)
    assert code == 1
    assert out == BANNER
    assert words in err, err
    assert not (tmp_path / "snap" / "s1.save").exists()
    rep = read_report(tmp_path / "report.json")
    assert rep is not None and not rep.ok and words in rep.error
    assert not rep.transaction_done
    assert rep.end_received == (case == "qmp")


def test_a_request_others_can_read_is_refused(tmp_path: Path) -> None:
    req = request(tmp_path)
    req.chmod(0o644)
    code, out, err = run(req, b"")
    assert code == 2 and "0600" in err
    assert out == BANNER[:0]  # nothing written: the sender sees EOF before any banner
    assert not (tmp_path / "report.json").exists()


def test_an_existing_memory_file_is_never_overwritten(tmp_path: Path) -> None:
    mem = tmp_path / "snap" / "s1.save"
    mem.parent.mkdir(mode=0o700)
    mem.write_bytes(b"keep")
    code, _, err = run(request(tmp_path), stream([[0]]))
    assert code == 1 and "exists" in err
    assert mem.read_bytes() == b"keep"


def test_no_disk_snapshot_once_the_sender_is_gone(tmp_path: Path) -> None:
    """xl killed after the suspend: its end of the stream closes; the receiver, held
    just before its transaction, then takes no disk snapshot (nobody would undo it)."""
    env = {"DOMSNAP_FAULT": "xl-receive-fsynced:hold", "DOMSNAP_STATE_DIR": str(tmp_path)}
    req = request(tmp_path)
    proc = subprocess.Popen(["sh", "-c", f"exec {rune(req)} domsnap xl migrate-receive"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(len(BANNER)) == BANNER
    proc.stdin.write(stream([[0, 1]]))
    proc.stdin.close()  # the sender dies with the whole stream sent
    time.sleep(0.5)
    (tmp_path / "release-xl-receive-fsynced").touch()
    assert proc.stdout.read() == b""
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "xl is gone" in err
    rep = read_report(tmp_path / "report.json")
    assert rep is not None and rep.end_received and not rep.transaction_done
    assert not (tmp_path / "snap" / "s1.save").exists()
