"""Live memory snapshots on Xen: ``xl migrate`` into domsnap's own receiver.

``xl save -p`` pauses the guest for the whole RAM write. ``xl migrate`` copies memory
in rounds while the guest runs and suspends it only for the last round; its transport
is a command of the caller's choosing (``-s``). The driver runs

    xl -vvv migrate -s "<python> -m workers.drivers.xlreceive <request>" DOMID domsnap

and :mod:`workers.drivers.xlreceive` writes the stream (a valid ``xl restore`` file) to
the snapshot's memory file, runs the disk ``transaction`` when the libxl END record
arrives (the guest is suspended then), and closes the reply channel without the
"ready" message: xl prints ``Migration failed, resuming at sender.``, resumes the guest
and exits 1. Success is the receiver's report (END received, file fsynced,
transaction done) plus that line plus the domain running again; xl's exit code is 1
on the intended path and proves nothing.

:func:`choose` decides per snapshot (``memory_strategy``: live or save, with the reason
for save): the setting (``DOMSNAP_XL_MEMORY_STRATEGY``), a paused domain (it cannot run
live rounds), disks not served by the device model's QMP (stub-domain device model:
save-restore; LVM). A hypervisor that refuses log-dirty mode (``xc: error: Failed to
enable logdirty``: Debian's 4.17.7+13 security build, no PV shadow paging) refuses the
live path before the suspend, with the guest untouched: :class:`LiveRefused`, and the
caller falls back to ``xl save -p`` in the same job, recording why. So does too little
free space for the stream (larger than RAM when the guest dirties pages).

Pause window (:func:`pause_window`): xl runs with ``-vvv`` and the runner hands over
each line of its stderr as it is written, timestamped here: from libxl's "guest has
suspended" to the completion of the resume that follows "resuming at sender" (xl
waits for the receiver to exit, then resumes the guest, then exits:
``tools/xl/xl_migrate.c``). Without those lines, the receiver's round timestamps and
xl's exit bound it from above.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domsnap.errors import CommandFailed, InsufficientSpace, OperationFailed
from workers.block import qmpblock
from workers.block.blocknodes import snapshot_actions
from workers.drivers.base import DiskOp, LiveResult, Progress
from workers.drivers.xlreceive import Report, read_report, rune
from workers.drivers.xlsave import wait_for_saves
from workers.hostio import faults
from workers.hostio.fsutil import atomic_write, fsync_path
from workers.hostio.space import MiB, Need, require

if TYPE_CHECKING:
    from workers.drivers.xl import XlDriver

log = logging.getLogger("domsnap.xl")

STRATEGIES = ("live", "save")
LOGDIRTY_REFUSED = "Failed to enable logdirty"  # xc, when the hypervisor has no log-dirty
FAILED_SUSPEND = "failed to suspend at sender"  # xl: libxl_domain_suspend failed
RESUMING = "resuming at sender"  # xl: the intended end (the receiver sent no "ready")
STREAMING = "Saving to migration stream"  # xl_saverestore.c, as the stream starts
SUSPENDED_LINE = "guest has suspended"  # libxl debug (-vvv): the suspend is done
RESUME_DONE = "libxl__ao_complete"  # libxl debug (-vvv): an AO (here the resume) completed
# libxl's errors when the guest never suspends (not its -vvv debug lines, which mention
# "suspend request" on every run)
NO_SUSPEND = ("guest didn't acknowledge suspend", "guest did not suspend",
              "did not respond to suspend request")
HOST_WORD = "domsnap"  # the HOST xl passes to the rune; the receiver ignores it
STREAM_FACTOR = 2.0  # the budget: RAM sent again by the rounds (5 at most), on the safe side
STREAM_EXTRA = 64 * MiB  # headers, p2m frames, vCPU and device state
READ_TIMEOUT_S = 120.0  # one read: a PV guest may take about a minute to ack the suspend


class LiveRefused(Exception):
    """The live path cannot be taken (before any suspend): fall back to ``xl save -p``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def choose(setting: str, state: str, disks: list[DiskOp]) -> str | None:
    """None when the live path is taken, else why ``xl save -p`` is."""
    if setting != "live":
        return f"the setting DOMSNAP_XL_MEMORY_STRATEGY is {setting!r}"
    if state != "running":
        return f"the domain is {state}: only a running guest can run the live rounds"
    other = [op for op in disks if op.strategy != "qmp"]
    if other:
        return ("disk(s) " + ", ".join(f"{op.vdev} ({op.strategy})" for op in other)
                + " are not taken through the device model's QMP at the suspend")
    return None


@dataclass
class _Run:
    """One live attempt's files: ``<state>/xl/live/<uuid>/``, 0700."""

    dir: Path
    request: Path
    report: Path

    @classmethod
    def make(cls, root: Path, uuid: str, domid: int) -> _Run:
        d = root / uuid
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        d.chmod(0o700)
        tag = secrets.token_hex(4)
        # the request's name carries the domid: recovery finds a surviving receiver by it
        return cls(d, d / f"domid-{domid}.{tag}.request.json", d / f"{tag}.report.json")

    def remove(self) -> None:
        self.request.unlink(missing_ok=True)
        self.report.unlink(missing_ok=True)


def clear_runs(root: Path, uuid: str) -> None:
    """Remove what live attempts on ``uuid`` left (a worker killed mid-capture never
    reached its cleanup); called by recovery once no receiver of it runs."""
    for path in (root / uuid).glob("*.json") if (root / uuid).is_dir() else []:
        path.unlink(missing_ok=True)


def capture_live(drv: XlDriver, uuid: str, domid: int, *, name: str, memory_file: Path,
                 disks: list[DiskOp], progress: Progress) -> LiveResult:
    """Memory live + every (QMP) disk at the suspend; the domain runs again on return.
    Raises :class:`LiveRefused` (nothing touched, the guest untouched) or the failure."""
    ram = drv.registry.get(uuid).config.memory * MiB
    budget = int(ram * STREAM_FACTOR) + STREAM_EXTRA
    try:
        require([Need(memory_file, budget, "live memory stream")],
                 reserve=drv.space_reserve_mb * MiB)
    except InsufficientSpace as exc:
        raise LiveRefused(f"not enough free space for a live stream: {exc.message}") from None
    actions: list[dict[str, Any]] = []
    if disks:
        with drv._qmp(domid) as q:  # a short session, closed before xl runs
            actions = snapshot_actions(q.execute("query-named-block-nodes"), name, disks)
    run = _Run.make(drv.live_dir, uuid, domid)
    atomic_write(run.request, json.dumps({
        "memory_file": str(memory_file), "qmp_socket": str(drv.qmp_path(domid)),
        "actions": actions, "budget": budget, "read_timeout": READ_TIMEOUT_S,
        "report": str(run.report), "qmp_timeout": drv.qmp_timeout}))
    result = LiveResult(domain_state="running", memory_strategy="live")
    progress("memory", "xl migrate: copying memory live into the snapshot")
    # the domain's xl monitor exits at the suspend: domsnap acts on its shutdowns from now
    # on (workers/drivers/xlmonitor.py); undone below if the guest never suspended
    new = drv.monitor_lost(uuid, domid, "xl migrate")
    try:
        t0 = time.monotonic()
        faults.point("xl-live-before")
        code: int | None
        seen: list[tuple[float, str]] = []  # xl's stderr lines, timestamped as they come

        def line(text: str) -> None:
            seen.append((time.time(), text))
            if STREAMING in text:  # xl sends its header: the live rounds begin
                faults.point("xl-live-streaming")

        try:
            done = drv.runner([drv.binary, "-vvv", "migrate", "-s", rune(run.request),
                               str(domid), HOST_WORD], timeout=drv.timeout, check=False,
                              outlive=True, stderr_lines=line)
            stderr, code = done.stderr, done.returncode
        except CommandFailed as exc:  # timed out: xl and the receiver were killed
            stderr, code = exc.stderr, exc.returncode
        exited_at = time.time()
        faults.point("xl-live-after")
        # xl waits for its receiver; one that outlived a killed xl may still be running
        wait_for_saves(drv.binary, domid=domid, timeout=drv.timeout)
        report = read_report(run.report)
        try:
            _check(drv, uuid, domid, stderr, code, report, memory_file, actions)
        except LiveRefused:
            if new:
                drv.monitors.clear(uuid, domid)  # refused before the suspend
            raise
        except OperationFailed:
            if new and any(s in stderr for s in NO_SUSPEND):
                drv.monitors.clear(uuid, domid)  # never suspended: the monitor still runs
            raise
        assert report is not None
        fsync_path(memory_file)
        result.memory_save_ms = round((time.monotonic() - t0) * 1000, 3)
        result.memory_bytes = memory_file.stat().st_size
        result.disks_ms = report.transaction_ms or 0.0
        result.pause_ms = pause_window(seen, report, exited_at)
        result.memory_page_records = report.page_data_records
        result.memory_rounds = report.rounds
        return result
    finally:
        run.remove()


def pause_window(lines: list[tuple[float, str]], report: Report, exited_at: float) -> float:
    """The guest's pause in ms: from libxl's ``guest has suspended`` (its debug line at
    ``-vvv``, ``suspend_common_wait_guest_check`` in ``libxl_dom_suspend.c``) to the end
    of the resume after ``resuming at sender`` (``libxl_domain_resume``'s AO completing:
    ``libxl__ao_complete``), as timestamped when xl wrote them. Where a line is missing:
    the suspend after the receiver's next-to-last round (the stream's start when it
    told one round apart), the end at xl's exit, just after its resume; on the safe side."""
    suspended = next((t for t, ln in lines if SUSPENDED_LINE in ln), None)
    if suspended is None:
        if len(report.round_ends) >= 2:
            suspended = report.round_ends[-2]
        else:
            suspended = report.times.get("stream", report.times.get("started", exited_at))
    resumed = exited_at
    after = [t for t, ln in lines if RESUMING in ln]
    if after:
        resumed = next((t for t, ln in lines if t >= after[0] and RESUME_DONE in ln),
                       exited_at)
    return round(max(0.0, resumed - suspended) * 1000, 3)


def _check(drv: XlDriver, uuid: str, domid: int, stderr: str, code: int | None,
           report: Report | None, memory_file: Path, actions: list[dict[str, Any]]) -> None:
    """Raise unless the live capture worked; put the domain back and remove the parts
    when it did not."""
    ok = (report is not None and report.ok and report.end_received and report.fsynced
          and report.transaction_done and RESUMING in stderr and code not in (0, None))
    state = _running_again(drv, uuid)
    if ok and state == "running":
        return
    if report is not None and report.transaction_done and state is not None:
        with drv._qmp(domid) as q:
            qmpblock.undo_actions(q, actions, timeout=drv.timeout)
    memory_file.unlink(missing_ok=True)
    tail = " | ".join(line for line in stderr.splitlines()[-6:] if line.strip())
    refused = next((ln for ln in stderr.splitlines() if LOGDIRTY_REFUSED in ln), None)
    if refused is not None or (FAILED_SUSPEND in stderr and report is not None
                               and not report.page_data_records and state == "running"):
        raise LiveRefused("xl migrate refused the live path before the suspend: "
                          + (refused.strip() if refused else tail))
    why = report.error if report is not None and report.error else "the receiver wrote no report"
    if any(s in stderr for s in NO_SUSPEND):
        why = f"the guest did not suspend in time ({why})"
    if ok:
        why = f"the domain is {state} after xl resumed it"
    raise OperationFailed(
        f"live memory snapshot failed: {why}; xl migrate exited {code}: {tail}; the domain "
        f"is {state or 'gone'}", argv=[drv.binary, "-vvv", "migrate", "-s", "<receiver>",
                                        str(domid), HOST_WORD], stderr=stderr[-4000:])


def _running_again(drv: XlDriver, uuid: str) -> str | None:
    """The domain's state once xl is done; a suspend nobody resumed (xl killed after the
    suspend, or its resume failed) is resumed here first."""
    found = drv._lookup(uuid)
    if found is not None and found[1] == "suspended":
        drv.resume_suspended(uuid)
        found = drv._lookup(uuid)
    if found is not None and found[1] == "paused":
        drv._xl("unpause", str(found[0]), timeout=60)
        found = drv._lookup(uuid)
    return found[1] if found is not None else None
