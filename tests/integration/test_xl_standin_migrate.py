"""``xl migrate -s`` in the xl stand-in (issue 8), against real QEMU.

A small receiver of the tests' own (tests/integration/xl_receiver.py, not domsnap's)
plays the transport: banner, capture, one QMP transaction when libxl's END arrived,
then it closes its reply channel and xl resumes the guest at its end (exit 1), as xl
4.17 does. Expected texts are xl 4.17's (tools/xl/xl_migrate.c, libxl, libxc).
"""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_xl_standin import MAGIC, XL, Xen, parse_stream, qemu_img_snapshots
from tests.integration.test_xl_standin import xen as xen  # noqa: F401 - the fixture
from tests.vm.guest import count_boots, ensure_guest, read_ticks, wait_for_tick

pytestmark = [pytest.mark.integration]

RECEIVER = Path(__file__).with_name("xl_receiver.py")
DEBUG = "libxl: debug: "


class Receiver:
    """One run of the test receiver: its control file, report, capture."""

    def __init__(self, xen: Xen, tag: str, **control: Any) -> None:
        self.dir = xen.work / f"recv-{tag}"
        self.dir.mkdir()
        self.capture = self.dir / "capture.bin"
        self.report_path = self.dir / "report.json"
        self.at_end = self.dir / "at-end"
        self.go = self.dir / "go"
        self.control = {"capture": str(self.capture), "report": str(self.report_path),
                        "at_end": str(self.at_end), "go": str(self.go), **control}
        (self.dir / "control.json").write_text(json.dumps(self.control))

    @property
    def command(self) -> str:
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(RECEIVER))} " \
               f"{shlex.quote(str(self.dir / 'control.json'))}"

    def report(self) -> dict[str, Any]:
        data = json.loads(self.report_path.read_text())
        assert isinstance(data, dict)
        return data


def migrate(xen: Xen, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.Popen[str]:
    return subprocess.Popen([str(XL), *args], env={**xen.env, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, list[str]]:
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr.splitlines()


def plain(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith(DEBUG)]


def wait_file(path: Path, timeout: float, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"xl ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {path} within {timeout}s"
        time.sleep(0.05)


def test_live_migrate_capture_resume_and_restore(xen: Xen) -> None:
    kernel, initrd = ensure_guest()
    image = xen.disk("guest")
    cfg = xen.cfg("guest", [f"{image},qcow2,xvda,rw"], memory=128, extra=[
        f'kernel = "{kernel}"', f'ramdisk = "{initrd}"',
        'extra = "console=ttyS0 quiet panic=-1 domsnap.tick=1"'])
    xen.ok("create", str(cfg))
    domid = xen.domid("guest")
    console = xen.console("guest")
    wait_for_tick(console, 3, timeout=180)
    recv = Receiver(xen, "live", delay=0.05, snapshot="live1",
                    qmp=str(xen.run / f"qmp-libxl-{domid}"))
    seen: list[tuple[float, int]] = []  # (time, last tick) while xl runs
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            ticks = read_ticks(console)
            seen.append((time.time(), ticks[-1][0] if ticks else 0))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc = migrate(xen, "-vvv", "migrate", "-s", recv.command, "guest", "somehost")
    try:
        wait_file(recv.at_end, 240, proc)
        # the stream has ended: the guest is suspended, its disk snapshot taken
        assert xen.row("guest")[4] == "---ss-"
        frozen = read_ticks(console)[-1][0]
        time.sleep(2.5)
        assert read_ticks(console)[-1][0] == frozen  # suspended: no ticks
        recv.go.touch()
        rc, lines = finish(proc)
    finally:
        stop.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
    report = recv.report()
    assert rc == 1, lines
    optlen = (recv.capture.read_bytes()[44:48])
    assert plain(lines) == [
        f"Saving to migration stream new xl format (info 0x3/0x0/"
        f"{int.from_bytes(optlen, 'little')})",
        f"xc: info: Saving domain {domid}, type x86 PV",
        "libxl: error: libxl_utils.c:440:libxl_read_exactly: file/stream truncated reading "
        "ready message from migration receiver stream",
        "Migration failed, resuming at sender."]
    assert report["argv"] == ["somehost", "xl", "-vvv", "migrate-receive"]  # the rune
    # -vvv: the suspend and the resume, in order, around the end of the stream
    debug = [line.split(f"Domain {domid}:", 1)[-1] for line in lines if line.startswith(DEBUG)]
    assert debug.index("issuing PV suspend request via XenBus control node") \
        < debug.index("guest acknowledged suspend request") \
        < debug.index("guest has suspended")
    resumed = [i for i, line in enumerate(lines) if "libxl_domain_resume" in line]
    assert resumed and resumed[0] > lines.index("Migration failed, resuming at sender.")
    # live: the guest kept ticking while the first PAGE_DATA records were sent
    pages = [t for layer, rtype, t in report["records"] if layer == "libxc" and rtype == 1]
    assert len(pages) > 3
    during = [n for t, n in seen if pages[0] <= t <= report["end"]]
    assert during and during[-1] - during[0] >= 2, (during, report["end"] - pages[0])
    # the transaction ran while the guest was suspended, and it held
    before, txn, after = report["qmp"]
    assert before["return"]["status"] == "paused" and after["return"]["status"] == "paused"
    assert txn == {"return": {}}
    assert qemu_img_snapshots(image) == ["live1"]
    # the stand-in's evidence: live rounds, then a last round sent while suspended
    log = (xen.root / "log" / "migrations.log").read_text().split()
    fields = dict(f.split("=", 1) for f in log if "=" in f)
    assert fields["rc"] == "1" and int(fields["rounds"]) >= 1
    assert int(fields["page_records"]) == len(pages)
    assert 0 < int(fields["first_record_suspended"]) <= len(pages)
    # resumed at the sender: same domid, same name, running on
    assert xen.domid("guest") == domid and xen.row("guest")[4] == "r-----"
    wait_for_tick(console, frozen + 2, timeout=60)
    monitor_log = (xen.root / "log" / "xl-guest.log").read_text()
    assert "Domain has suspended." in monitor_log  # xl 4.17's monitor exits at a suspend
    # the capture is a save file: the framing is whole, and it restores
    data = recv.capture.read_bytes()
    assert data[:32] == MAGIC
    parsed, payload = parse_stream(recv.capture, 48 + int.from_bytes(optlen, "little"))
    assert payload[:4] == b"QEVM" and parsed.records["Page data"] == len(pages)
    for name in ("x86 PV info", "x86 CPUID policy", "x86 MSR policy", "Static data end",
                 "x86 PV P2M frames", "x86 TSC info", "Shared info", "x86 PV vcpu basic",
                 "x86 PV vcpu extended", "End", "libxl LIBXC_CONTEXT", "libxl END"):
        assert parsed.records[name] == 1, name
    xen.ok("destroy", "guest")
    restored_at = console.stat().st_size  # what the restored guest prints comes after
    proc2 = xen.ok("restore", str(recv.capture))
    assert "xc: info: Restore successful" in proc2.stderr.splitlines()
    # the restored guest counts on from the moment of the suspend (its memory): its
    # first tick follows the last one before the suspend (or the one after it: the
    # vCPUs ran an instant for `cont` + `stop`, see migrate.py)
    deadline = time.monotonic() + 300  # TCG on a loaded 2-core host can be slow
    while True:
        ns = [n for n, _ in read_ticks(console)]
        start = ns.index(frozen)
        drop = next((j for j in range(start + 1, len(ns)) if ns[j] <= ns[j - 1]), None)
        if drop is not None and len(ns) > drop + 1:
            break
        since = console.read_bytes()[restored_at:].decode("utf-8", errors="replace")
        crashed = any(m in since for m in ("Oops", "BUG:", "Kernel panic"))
        assert time.monotonic() < deadline and not crashed, \
            f"{ns[start:]}\nthe console since the restore:\n{since[:6000]}"
        time.sleep(0.2)
    assert ns[drop] in (frozen + 1, frozen + 2), (frozen, ns[start:])
    assert ns[drop + 1] == ns[drop] + 1
    assert count_boots(console) == 1


def test_receiver_killed_mid_stream_resumes_and_next_migrate_works(xen: Xen) -> None:
    domid = xen.create("domu")
    recv = Receiver(xen, "killed", die_after=200_000)  # of ~800 KB
    rc, lines = finish(migrate(xen, "migrate", "-s", recv.command, "domu", "h"))
    assert rc == 1
    helper = [line for line in lines if "save/restore helper" in line]
    assert helper, lines
    assert helper[0].startswith(
        "libxl: error: libxl_exec.c:117:libxl_report_child_exitstatus: domain "
        f"{domid} save/restore helper [") and \
        helper[0].endswith("] died due to fatal signal Broken pipe")
    assert "migration sender: libxl_domain_suspend failed (rc=-3)" in lines
    assert any(line.startswith("libxl: info: libxl_exec.c:117:libxl_report_child_exitstatus"
                               ": migration transport process [") and
               line.endswith("] died due to fatal signal Killed") for line in lines)
    # killed during the live rounds, the resume finds a guest that never suspended;
    # killed during the last round, it resumes a suspended one (silently)
    tail = lines[lines.index("Migration failed, resuming at sender.") + 1:]
    assert tail in ([], [f"xc: error: Dom {domid} not suspended: (shutdown 0, reason 0): "
                         "Internal error",
                         f"libxl: error: libxl_dom_suspend.c:661:domain_resume_done: Domain "
                         f"{domid}:xc_domain_resume failed: Invalid argument"]), lines
    assert xen.row("domu")[4] == "r-----"
    with xen.dm(domid) as q:
        assert q.execute("query-status")["status"] == "running"
    again = Receiver(xen, "again")
    proc = migrate(xen, "migrate", "-s", again.command, "domu", "h")
    wait_file(again.at_end, 120, proc)
    assert xen.row("domu")[4] == "---ss-"
    again.go.touch()
    rc, lines = finish(proc)
    assert rc == 1 and lines[-1] == "Migration failed, resuming at sender."
    assert xen.row("domu")[4] == "r-----"


def test_bad_banner_and_a_transport_that_exits(xen: Xen) -> None:
    domid = xen.create("domu")
    recv = Receiver(xen, "banner", banner="x" * 53 + "\n")  # 54 bytes, not xl's
    rc, lines = finish(migrate(xen, "migrate", "-s", recv.command, "domu", "h"))
    assert rc == 1
    assert lines[:2] == [
        "migration receiver stream contained unexpected data instead of banner",
        f"(command run was: exec {recv.command} h xl migrate-receive )"]
    assert lines[2].endswith("] exited with error status 1")  # the receiver saw EOF
    assert recv.capture.read_bytes() == b""  # xl sent nothing
    assert xen.row("domu")[4] == "r-----"
    # -s '': the rune is HOST verbatim; a transport that exits at once
    rc, lines = finish(migrate(xen, "migrate", "-s", "", "domu", "exit 3"))
    assert rc == 1
    assert lines[0] == ("libxl: error: libxl_utils.c:440:libxl_read_exactly: file/stream "
                        "truncated reading banner from migration receiver stream")
    assert lines[1].startswith("libxl: info: libxl_exec.c:117:libxl_report_child_exitstatus: "
                               "migration transport process [")
    assert lines[1].endswith("] exited with error status 3")
    assert xen.row("domu")[4] == "r-----"
    with xen.dm(domid) as q:
        assert q.execute("query-status")["status"] == "running"


def test_options_rune_and_help(xen: Xen) -> None:
    help_text = xen.xl("migrate", "-h")
    assert help_text.returncode == 0
    assert help_text.stdout.startswith("Usage: xl [-v] migrate [options] <Domain> <host>\n\n"
                                       "Migrate a domain to another host.\n")
    assert "-C <config>     Send <config> instead of config file from creation." \
        in help_text.stdout
    missing = xen.xl("migrate", "onlyone")
    assert missing.returncode == 2 and "'xl migrate' requires at least 2 arguments." \
        in missing.stderr
    nosuch = xen.xl("migrate", "nosuch", "h")
    assert nosuch.returncode == 1 and \
        nosuch.stderr.strip() == "nosuch is an invalid domain identifier (rc=-6)"
    xen.create("domu")
    recv = Receiver(xen, "rune")
    proc = migrate(xen, "-vv", "migrate", "-e", "--debug", "-p", "-D", "-s", recv.command,
                   "domu", "far")
    wait_file(recv.at_end, 120, proc)
    recv.go.touch()
    rc, _ = finish(proc)
    assert rc == 1
    assert recv.report()["argv"] == ["far", "xl", "-vv", "migrate-receive", "-e", "-d", "-p"]
    data = recv.capture.read_bytes()
    (clen,) = struct.unpack("<I", data[48:52])
    config = json.loads(data[52:52 + clen].rstrip(b"\0"))
    assert config["c_info"]["domid"] == xen.domid("domu")  # -D: the domid is sent


def test_guest_that_does_not_suspend_is_left_running(xen: Xen) -> None:
    domid = xen.create("domu")
    (xen.dom_dir("domu") / "no-suspend").touch()
    recv = Receiver(xen, "nosusp")
    t0 = time.monotonic()
    rc, lines = finish(migrate(xen, "migrate", "-s", recv.command, "domu", "h",
                               env={"XL_STANDIN_SUSPEND_TIMEOUT": "2"}))
    assert time.monotonic() - t0 >= 2
    assert rc == 1
    assert lines[1:7] == [
        f"xc: info: Saving domain {domid}, type x86 PV",
        f"libxl: error: libxl_dom_suspend.c:262:domain_suspend_common_pvcontrol_suspending: "
        f"Domain {domid}:guest didn't acknowledge suspend, cancelling request",
        "xc: error: save callback suspend() failed: 0: Internal error",
        "xc: error: Save failed (0 = Success): Internal error",
        f"libxl: error: libxl_stream_write.c:347:libxl__xc_domain_save_done: Domain {domid}:"
        "saving domain: domain did not respond to suspend request: Success",
        "migration sender: libxl_domain_suspend failed (rc=-8)"]
    assert lines[-1] == "Migration failed, failed to suspend at sender."
    assert xen.row("domu")[4] == "r-----"
    with xen.dm(domid) as q:
        assert q.execute("query-status")["status"] == "running"
    assert "eof" in recv.report()  # the stream stopped short of libxl's END


def test_hypervisor_without_pv_shadow_refuses_at_once(xen: Xen) -> None:
    domid = xen.create("domu")
    recv = Receiver(xen, "noshadow")
    t0 = time.monotonic()
    rc, lines = finish(migrate(xen, "migrate", "-s", recv.command, "domu", "h",
                               env={"XL_STANDIN_NO_PV_SHADOW": "1"}))
    assert time.monotonic() - t0 < 30
    assert rc == 1
    assert [line for line in lines if "exit" not in line][1:] == [
        f"xc: info: Saving domain {domid}, type x86 PV",
        "xc: error: Failed to enable logdirty: 95,22,0 (22 = Invalid argument): Internal "
        "error",
        "xc: error: Save failed (22 = Invalid argument): Internal error",
        f"libxl: error: libxl_stream_write.c:347:libxl__xc_domain_save_done: Domain {domid}:"
        "saving domain: domain did not respond to suspend request: Invalid argument",
        "migration sender: libxl_domain_suspend failed (rc=-8)",
        "Migration failed, failed to suspend at sender."]
    assert xen.row("domu")[4] == "r-----"
    with xen.dm(domid) as q:
        assert q.execute("query-status")["status"] == "running"
    # an HVM guest uses HAP's log-dirty: not refused
    hvm = xen.create("hvm", extra=['type = "hvm"'])
    recv = Receiver(xen, "hvm")
    proc = migrate(xen, "migrate", "-s", recv.command, "hvm", "h",
                   env={"XL_STANDIN_NO_PV_SHADOW": "1"})
    wait_file(recv.at_end, 120, proc)
    recv.go.touch()
    rc, lines = finish(proc)
    assert rc == 1 and lines[-1] == "Migration failed, resuming at sender."
    parsed, _ = parse_stream(recv.capture, 48 + int.from_bytes(
        recv.capture.read_bytes()[44:48], "little"))
    assert parsed.guest_type == 2 and parsed.records["HVM context"] == 1
    assert parsed.records["libxl EMULATOR_CONTEXT"] == 1
    assert xen.domid("hvm") == hvm and xen.row("hvm")[4] == "r-----"


@pytest.mark.parametrize("status", [0, 5])
def test_a_ready_message_hands_the_domain_over(xen: Xen, status: int) -> None:
    """What domsnap must never do: answer "ready". xl then renames the domain away,
    gives the target permission to start, and destroys its copy (or resumes it when
    the target reports a failure)."""
    domid = xen.create("domu")
    recv = Receiver(xen, f"ready{status}", ready=status)
    proc = migrate(xen, "migrate", "-s", recv.command, "domu", "h")
    wait_file(recv.at_end, 120, proc)
    recv.go.touch()
    rc, lines = finish(proc)
    assert recv.report()["go"] == "domain is yours, you are cleared to unpause\0"
    assert lines[2:4] == ["migration sender: Target has acknowledged transfer.",
                          "migration sender: Giving target permission to start."]
    if status == 0:
        assert rc == 0 and lines[4:] == ["migration sender: Target reports successful "
                                         "startup.", "Migration successful."]
        assert xen.xl("domid", "domu").returncode == 1
        assert not (xen.run / f"qmp-libxl-{domid}").exists()
    else:
        assert rc == 1 and lines[4:] == [
            f"migration sender: Target reports startup failure (status code {status}).",
            "migration sender: Trying to resume at our end.",
            "migration sender: Resumed OK.",
            "Migration failed due to problems at target."]
        assert xen.domid("domu") == domid and xen.row("domu")[4] == "r-----"


def test_restore_refuses_corrupt_and_truncated_streams(xen: Xen) -> None:
    xen.create("domu")
    save = xen.work / "good.save"
    xen.ok("save", "domu", str(save))
    data = save.read_bytes()
    (optlen,) = struct.unpack("<I", data[44:48])
    start = 48 + optlen
    cases = {
        "truncated": (data[:start + (len(data) - start) // 2],
                      "xc: error: Failed to read "),
        "no libxl END": (data[:-8], "unexpected end of stream reading record header"),
        "bad ident": (data[:start] + b"LibxlFmX" + data[start + 8:], "Invalid ident"),
        "bad record length": (data[:start + 16] + b"\x01\0\0\0\xff\xff\xff\x7f"
                              + data[start + 24:], "exceeds max"),
    }
    for what, (blob, expect) in cases.items():
        bad = xen.work / f"{what.replace(' ', '-')}.save"
        bad.write_bytes(blob)
        proc = xen.xl("restore", str(bad))
        assert proc.returncode == 1, (what, proc.stderr)
        assert expect in proc.stderr, (what, proc.stderr)
        assert xen.xl("domid", "domu").returncode == 1, what  # nothing left behind
        assert list((xen.root / "domains").iterdir()) == [], what
    xen.ok("restore", str(save))
    assert xen.row("domu")[4] == "r-----"
    os.unlink(save)
