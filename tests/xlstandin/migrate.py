"""``xl migrate``: a live migration over a transport command, as xl 4.17 does it.

From tools/xl/xl_migrate.c (Xen 4.17):

- ``xl migrate [-C CFG] [-s CMD] [-e] [-F] [-p] [-D] [--debug] DOMAIN HOST`` runs
  ``sh -c RUNE`` with the child's stdin = the stream and its stdout = the reply
  channel. RUNE is ``exec CMD HOST xl[ -t][ -T][ -v...] migrate-receive[ -e][ -d][ -p]``
  (``-t`` when stderr is a terminal or xl ran with ``-t``, ``-T`` when xl ran with
  ``-T``, ``-v``s beyond xl's default level, ``-e`` for ``-e`` or ``-F``), or HOST
  verbatim when CMD is empty. Default CMD is ``ssh``.
- The sender reads the receiver's 54-byte banner, writes the xl header and config
  (as ``xl save``), then libxl_domain_suspend(LIVE): libxc's live rounds while the
  guest runs, the suspend, the last round, the rest of the stream (stream.py).
- It then waits for ``domain received, ready to unpause`` (34 bytes with the NUL).
  A closed channel: ``file/stream truncated reading ready message from migration
  receiver stream``, ``Migration failed, resuming at sender.``, the guest resumed
  (libxl_domain_resume, suspend_cancel=1: same domid, same name), exit 1. A "ready"
  message: rename to ``NAME--migratedaway``, ``domain is yours, you are cleared to
  unpause``, read the receiver's report and status byte, destroy (exit 0) or resume.
- libxl_domain_suspend failing with ERROR_GUEST_TIMEDOUT (the guest never suspended,
  or log-dirty could not be enabled: libxc's send_domain_memory_live) ends in
  ``Migration failed, failed to suspend at sender.`` with the guest left as it is; any
  other failure (the receiver died: the save helper gets EPIPE) resumes the guest.

In the stand-in the live rounds are QEMU's own precopy migration into a pipe, framed
as PAGE_DATA records: the guest runs while its memory is copied. QEMU stops the vCPUs
at the end (``pause-before-switchover``): that is the suspend. After libxc's
SPP_MAX_ITERATIONS (5) rounds the downtime limit is raised so QEMU stops the guest at
the next one (libxc's precopy policy; QEMU would otherwise go on while a guest dirties
memory faster than it is sent). When QEMU's stream ends its block nodes are
inactive; ``cont`` + ``stop`` makes them usable again (as in ``xl save -p``), so a
receiver's QMP transaction on ``qmp-libxl-<domid>`` works while the guest stays
suspended (``xl list``: ``---ss-``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from typing import Any, NoReturn

from tests.xlstandin.cli import (
    GLOBALS,
    MEM_FD,
    debug,
    err,
    find_domain,
    opts,
    read_cfg,
)
from tests.xlstandin.domains import Dom, Env, Fail, kill, libxl_error, wait_finalized
from tests.xlstandin.monitor import SUSPEND_SEEN
from tests.xlstandin.qmp import QMP, QMPFailure
from tests.xlstandin.saverestore import (
    BYTEORDER,
    FLAG_JSON,
    FLAG_STREAMV2,
    HEADER,
    SAVE_MAGIC,
    SUSPENDED,
    guest_acks,
    layout,
    no_ack_lines,
    not_suspended_lines,
    save_optdata,
)
from tests.xlstandin.stream import PagePump, StreamWriter, start_pump

BANNER = b"xl migration receiver ready, send binary domain data.\n"
READY = b"domain received, ready to unpause\0"
GO = b"domain is yours, you are cleared to unpause\0"
REPORT = b"my copy unpause results are as follows\0"
ERROR_FAIL, ERROR_GUEST_TIMEDOUT = -3, -8
MAX_ROUNDS = 5  # libxc's SPP_MAX_ITERATIONS
READ_EXACTLY = "libxl_utils.c:440:libxl_read_exactly"
CHILD_REPORT = "libxl_exec.c:117:libxl_report_child_exitstatus"


def cmd_migrate(env: Env, args: list[str]) -> int:
    found, rest = opts(args, "migrate", "FC:s:epD", ["debug", "live"], 2)
    config_file, ssh = None, "ssh"
    daemonize, debug_flag, pause, preserve = True, False, False, False
    for o, a in found:
        if o == "-C":
            config_file = a
        elif o == "-s":
            ssh = a
        elif o in ("-F", "-e"):
            daemonize = False
        elif o == "-p":
            pause = True
        elif o == "-D":
            preserve = True
        elif o == "--debug":
            debug_flag = True
    target = find_domain(env, rest[0])
    host = rest[1]
    if isinstance(target, int):
        raise Fail(1, "unable to retrieve domain configuration")
    config = read_cfg(config_file, what="override", rc=1) if config_file else target.config
    optdata = save_optdata(config, domid=target.domid if preserve else None)
    if not ssh:
        rune = host
    else:
        tty = GLOBALS.progress_cr or os.isatty(2)
        verbose = f" -{'v' * GLOBALS.verbose}" if GLOBALS.verbose else ""
        rune = (f"exec {ssh} {host} xl{' -t' if tty else ''}"
                f"{' -T' if GLOBALS.timestamps else ''}{verbose} migrate-receive"
                f"{'' if daemonize else ' -e'}{' -d' if debug_flag else ''}"
                f"{' -p' if pause else ''}")
    return Migration(env, target, rune, optdata).run()


def _ao(where: str) -> tuple[str, str]:
    """A libxl asynchronous operation's address and its poller's, as debug lines show."""
    base = 0x55D0C0000000 + (os.getpid() << 12) + (0x2A0 if where == "resume" else 0x1C0)
    return f"0x{base:x}", f"0x{base + 0x9E0:x}"



class _Unacked(Exception):
    """The guest did not acknowledge the suspend request (raised inside the control
    session, so that libxl's wait runs without holding the stand-in's control socket)."""

class Migration:
    """One ``xl migrate``: the transport child, the stream, the outcome."""

    def __init__(self, env: Env, dom: Dom, rune: str, optdata: bytes) -> None:
        self.env = env
        self.dom = dom
        self.rune = rune
        self.optdata = optdata
        self.child: subprocess.Popen[bytes] | None = None
        self.send_fd = -1
        self.recv_fd = -1
        self.suspended = False
        self.was_running = True
        self.pump: PagePump | None = None
        self.rounds = 0
        self.writer: StreamWriter | None = None

    # ----------------------------------------------------------------- the flow

    def run(self) -> int:
        rc = 1
        try:
            rc = self._run()
        finally:
            self.log(rc)
        return rc

    def log(self, rc: int) -> None:
        """Test evidence (not in xl): one line per migration in log/migrations.log."""
        pump, w = self.pump, self.writer
        (self.env.root / "log").mkdir(exist_ok=True)
        with open(self.env.root / "log" / "migrations.log", "a") as fh:
            fh.write(f"{self.dom.uuid} {self.dom.domid} rc={rc} rounds={self.rounds} "
                     f"stream_bytes={w.written if w else 0} "
                     f"page_records={pump.stats.records if pump else 0} "
                     f"qemu_bytes={pump.stats.qemu_bytes if pump else 0} "
                     f"first_record_suspended={pump.stats.suspend_record if pump else None}\n")

    def _run(self) -> int:
        send_r, self.send_fd = os.pipe()
        self.recv_fd, recv_w = os.pipe()
        try:
            self.child = subprocess.Popen(["sh", "-c", self.rune], stdin=send_r,
                                          stdout=recv_w, close_fds=True)
        finally:
            os.close(send_r)
            os.close(recv_w)
        # xl: "if receiver dies, we get an error and can clean up rather than just dying"
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        problem = self.read_fixed(BANNER, "banner")
        if problem:
            err(*problem)
            self.close_send()
            self.child_report()
            return 1
        writer = self.writer = StreamWriter(self.send_fd, layout(self.dom))
        try:
            writer.write(HEADER.pack(SAVE_MAGIC, BYTEORDER, FLAG_JSON | FLAG_STREAMV2, 0,
                                     len(self.optdata)) + self.optdata)
        except OSError as exc:
            err(f"libxl: error: libxl_utils.c:471:libxl_write_exactly: failed to write "
                f"header for migration stream: {exc.strerror}",
                f"xl: fatal error: xl_saverestore.c:96: {exc.strerror}: libxl_write_exactly("
                "ctx, fd, &hdr, sizeof(hdr), source, \"header\")")
            return 1
        err(f"Saving to migration stream new xl format (info 0x3/0x0/{len(self.optdata)})")
        rc = self.suspend_live(writer)
        if rc:
            err(f"migration sender: libxl_domain_suspend failed (rc={rc})")
            if rc == ERROR_GUEST_TIMEDOUT:
                self.close_send()
                self.child_report()
                err("Migration failed, failed to suspend at sender.")
                return 1
            return self.failed_resume()
        problem = self.read_fixed(READY, "ready message")
        if problem:
            err(*problem)
            return self.failed_resume()
        return self.handover()

    def failed_resume(self) -> int:
        self.close_send()
        self.child_report()
        err("Migration failed, resuming at sender.")
        self.resume()
        return 1

    def handover(self) -> int:
        """The receiver said "ready": what xl does next (domsnap never gets here)."""
        err("migration sender: Target has acknowledged transfer.")
        name = self.dom.name
        away = f"{name}--migratedaway"
        self.rename(away)
        err("migration sender: Giving target permission to start.")
        try:
            StreamWriter(self.send_fd, layout(self.dom)).write(GO)
        except OSError as exc:
            err(f"libxl: error: libxl_utils.c:471:libxl_write_exactly: failed to write GO "
                f"message for migration stream: {exc.strerror}")
            return self.failed_badly()
        problem = self.read_fixed(REPORT, "success/failure report message")
        status = b""
        if not problem:
            status, problem = self.read_raw(1, "success/failure status",
                                            "migration ack stream")
        if problem:
            err(*problem)
            return self.failed_badly()
        code = int.from_bytes(status, "little", signed=True)
        if code:
            err(f"migration sender: Target reports startup failure (status code {code}).")
            problem = self.read_fixed(GO, "permission for sender to resume")
            if problem:
                err(*problem)
                return self.failed_badly()
            err("migration sender: Trying to resume at our end.")
            self.rename(name)
            if self.resume():
                err("migration sender: Resumed OK.")
            err("Migration failed due to problems at target.")
            return 1
        err("migration sender: Target reports successful startup.")
        kill(self.dom)
        err("Migration successful.")
        return 0

    def failed_badly(self) -> int:
        err("** Migration failed during final handshake **",
            "Domain state is now undefined !",
            "Please CHECK AT BOTH ENDS for running instances, before renaming and",
            " resuming at most one instance.  Two simultaneous instances of the domain",
            " would probably result in SEVERE DATA LOSS and it is now your",
            " responsibility to avoid that.  Sorry.")
        self.close_send()
        self.child_report()
        return 1

    # ----------------------------------------------------------------- libxl_domain_suspend

    def suspend_live(self, writer: StreamWriter) -> int:
        """libxl_domain_suspend(LIVE): 0, or libxl's rc after logging what failed."""
        dom = self.dom
        ao, poller = _ao("suspend")
        debug("libxl_domain.c:512:libxl_domain_suspend", dom.domid,
              f"ao {ao}: create: how=(nil) callback=(nil) poller={poller}")
        debug("libxl_domain.c:540:libxl_domain_suspend", dom.domid,
              f"ao {ao}: inprogress: poller={poller}, flags=i")
        err(f"xc: info: Saving domain {dom.domid}, type x86 {'PV' if dom.type == 'pv' else 'HVM'}")
        try:
            writer.head()
            if dom.type == "pv" and not self.env.pv_shadow:
                # send_domain_memory_live -> enable_logdirty: ENABLE_LOGDIRTY fails with
                # EOPNOTSUPP, SHADOW_OP_OFF with EINVAL; the guest was never asked
                err("xc: error: Failed to enable logdirty: 95,22,0 (22 = Invalid argument): "
                    "Internal error", "xc: error: Save failed (22 = Invalid argument): "
                    "Internal error",
                    libxl_error("libxl_stream_write.c:347:libxl__xc_domain_save_done",
                                dom.domid, "saving domain: domain did not respond to suspend "
                                "request: Invalid argument"))
                return ERROR_GUEST_TIMEDOUT
            try:
                rc = self.live_rounds(writer)
            except _Unacked:
                time.sleep(self.env.suspend_timeout)  # libxl's timeout, nothing held
                err(*no_ack_lines(dom))
                rc = ERROR_GUEST_TIMEDOUT
            if rc:
                return rc
            writer.tail()
        except OSError:
            return self.helper_died()
        debug("libxl_event.c:2067:libxl__ao_complete", None, f"ao {ao}: complete, rc=0")
        debug("libxl_event.c:2036:libxl__ao__destroy", None, f"ao {ao}: destroy")
        return 0

    def helper_died(self) -> int:
        """libxl-save-helper writing into a pipe whose reader is gone: SIGPIPE kills it."""
        err(libxl_error(CHILD_REPORT, None, f"domain {self.dom.domid} save/restore helper "
                        f"[{os.getpid()}] died due to fatal signal Broken pipe"))
        self.cancel_qemu()
        return ERROR_FAIL

    def live_rounds(self, writer: StreamWriter) -> int:
        dom = self.dom
        with dom.control(timeout=600) as q:
            self.was_running = q.execute("query-status")["status"] == "running"
            acks = guest_acks(dom, self.was_running)
            pump = self.pump = start_pump(q, writer, MEM_FD, live=True)
            forced = continued = False
            while True:
                if pump.error is not None:
                    raise pump.error
                info = q.execute("query-migrate")
                status = info.get("status")
                rounds = int(info.get("ram", {}).get("dirty-sync-count", 0))
                self.rounds = max(self.rounds, rounds)
                if status == "active" and rounds >= MAX_ROUNDS and not forced:
                    forced = True  # libxc's policy: stop and copy after 5 rounds
                    q.execute("migrate-set-parameters", {"downtime-limit": 2_000_000})
                elif status == "pre-switchover" and not continued:
                    # once: QEMU may still report pre-switchover on the next poll after
                    # migrate-continue (it is asynchronous); a second continue then
                    # meets a completed migration and fails the save (seen in CI)
                    if not acks:
                        self.no_ack(q)  # raises _Unacked: out of the control session
                    self.suspend_moment(pump)
                    q.execute("migrate-continue", {"state": "pre-switchover"})
                    continued = True
                elif status == "completed":
                    break
                elif status in ("failed", "cancelled"):
                    if pump.error is not None:
                        raise pump.error
                    err(f"xc: error: Save failed ({info.get('error-desc', status)}): "
                        "Internal error", libxl_error(
                            "libxl_stream_write.c:347:libxl__xc_domain_save_done", dom.domid,
                            "saving domain: domain responded to suspend request: "
                            "Input/output error"))
                    return ERROR_FAIL
                time.sleep(0.01)
            pump.join(600)
            if pump.error is not None:
                raise pump.error
            # QEMU inactivated the block nodes at the end of its stream: `cont` is 7.2's
            # only way back; `stop` at once keeps the guest suspended
            wait_finalized(q)
            q.execute("cont")
            q.execute("stop")
        return 0

    def suspend_moment(self, pump: PagePump) -> None:
        """QEMU stopped the vCPUs: the guest has suspended (libxl's debug lines)."""
        dom = self.dom
        if dom.type == "hvm":
            debug("libxl_dom_suspend.c:183:domain_suspend_callback_common", dom.domid,
                  "Calling xc_domain_shutdown on HVM domain")
        else:
            kind = "PV" if dom.type == "pv" else "PVH/HVM"
            debug("libxl_dom_suspend.c:203:domain_suspend_callback_common", dom.domid,
                  f"issuing {kind} suspend request via XenBus control node")
            debug("libxl_dom_suspend.c:281:domain_suspend_common_pvcontrol_suspending",
                  dom.domid, "guest acknowledged suspend request")
        debug("libxl_dom_suspend.c:300:domain_suspend_common_wait_guest", dom.domid,
              "wait for the guest to suspend")
        self.suspended = True
        (dom.dir / SUSPEND_SEEN).touch()  # the domain's monitor sees the suspend and exits
        (dom.dir / SUSPENDED).touch()  # xl list: ---ss-
        dom.set_state("paused")
        pump.mark_suspend()
        debug("libxl_dom_suspend.c:358:suspend_common_wait_guest_check", dom.domid,
              "guest has suspended")

    def no_ack(self, q: QMP) -> NoReturn:
        """The guest never answers the suspend request: QEMU's migration is cancelled
        (QEMU runs the vCPUs again itself); libxl then waits out its timeout, with the
        stand-in's control socket released (on Xen nothing else is held meanwhile:
        another xl verb on the domain works)."""
        dom = self.dom
        kind = "PV" if dom.type == "pv" else "PVH/HVM"
        debug("libxl_dom_suspend.c:203:domain_suspend_callback_common", dom.domid,
              f"issuing {kind} suspend request via XenBus control node")
        self.cancel_qemu(q)
        raise _Unacked

    def cancel_qemu(self, q: QMP | None = None) -> None:
        """End QEMU's migration (if any) and the pump; QEMU restarts a guest that ran."""
        if self.pump is None:
            return
        with contextlib.ExitStack() as stack:
            try:
                if q is None:
                    q = stack.enter_context(self.dom.control(timeout=60))
                q.execute("migrate_cancel")
                q.poll("query-migrate", lambda r: r.get("status") in (
                    "cancelled", "failed", "completed"), timeout=60, interval=0.01)
            except (QMPFailure, OSError):
                pass
        self.pump.join(60)

    # ----------------------------------------------------------------- resume

    def resume(self) -> bool:
        """libxl_domain_resume(suspend_cancel=1): the guest runs on where it stopped."""
        dom = self.dom
        ao, poller = _ao("resume")
        debug("libxl_domain.c:184:libxl_domain_resume", dom.domid,
              f"ao {ao}: create: how=(nil) callback=(nil) poller={poller}")
        ok = self.suspended
        if self.suspended:
            with dom.control() as q:
                status = wait_finalized(q)
                if self.was_running and status != "running":
                    q.execute("cont")
            (dom.dir / SUSPENDED).unlink(missing_ok=True)
            dom.set_state("running" if self.was_running else "paused")
            self.suspended = False
        else:
            err(*not_suspended_lines(dom))
        debug("libxl_event.c:2067:libxl__ao_complete", None,
              f"ao {ao}: complete, rc={0 if ok else ERROR_FAIL}")
        debug("libxl_domain.c:192:libxl_domain_resume", dom.domid,
              f"ao {ao}: inprogress: poller={poller}, flags=ic")
        debug("libxl_event.c:2036:libxl__ao__destroy", None, f"ao {ao}: destroy")
        return ok

    def rename(self, name: str) -> None:
        """libxl_domain_rename: the stand-in's name lives in the stored config."""
        dom = self.dom
        with self.env.lock():
            config: dict[str, Any] = json.loads((dom.dir / "config.json").read_text())
            config["c_info"]["name"] = name
            tmp = dom.dir / "config.json.tmp"
            tmp.write_text(json.dumps(config, indent=2) + "\n")
            os.replace(tmp, dom.dir / "config.json")
            dom.config = config

    # ----------------------------------------------------------------- the channel

    def read_raw(self, size: int, what: str, source: str) -> tuple[bytes, list[str]]:
        """libxl_read_exactly: the bytes, or its error lines."""
        data = b""
        while len(data) < size:
            try:
                chunk = os.read(self.recv_fd, size - len(data))
            except OSError as exc:
                return data, [libxl_error(READ_EXACTLY, None, f"failed to read {what} from "
                                          f"{source}: {exc.strerror}")]
            if not chunk:
                return data, [libxl_error(READ_EXACTLY, None, f"file/stream truncated "
                                          f"reading {what} from {source}")]
            data += chunk
        return data, []

    def read_fixed(self, msg: bytes, what: str) -> list[str]:
        """migrate_read_fixedmessage: [] when ``msg`` came, else xl's lines."""
        stream = "migration receiver stream"
        data, problem = self.read_raw(len(msg), what, stream)
        if problem:
            return problem
        if data != msg:
            return [f"{stream} contained unexpected data instead of {what}",
                    f"(command run was: {self.rune} )"]
        return []

    def close_send(self) -> None:
        if self.send_fd >= 0:
            os.close(self.send_fd)
            self.send_fd = -1

    def child_report(self) -> None:
        """migration_child_report: wait up to 2 s for the transport to exit and log a
        failure status (xl_report_child_exitstatus at XTL_INFO)."""
        child = self.child
        if child is None:
            return
        deadline = time.monotonic() + 2
        fd = self.recv_fd
        while True:
            status = child.poll()
            if status is not None:
                if status > 0:
                    err(f"libxl: info: {CHILD_REPORT}: migration transport process "
                        f"[{child.pid}] exited with error status {status}")
                elif status < 0:
                    err(f"libxl: info: {CHILD_REPORT}: migration transport process "
                        f"[{child.pid}] died due to fatal signal "
                        f"{signal.strsignal(-status)}")
                return
            left = deadline - time.monotonic()
            if left <= 0:
                err(f"migration child [{child.pid}] not exiting, no longer waiting (exit "
                    "status will be unreported)")
                return
            if fd >= 0:
                ready, _, broken = select.select([fd], [], [fd], left)
                if ready or broken:
                    fd = -1
            else:
                time.sleep(min(0.001, left))

