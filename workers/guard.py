"""The host's pause guard: a domain domsnap paused is running again within its
pause budget, whatever died (invariant 1).

``domsnap worker`` starts it as a process of its own session (``python -m
workers.guard``), so it survives the supervisor and the pools being killed
together. It needs neither Redis nor the broker for its first duty: it reads the
host-side pause markers (``<state dir>/pausing/<uuid>``, each with the deadline
set when the operation was admitted, or when a revert began its restore) and,
for each whose deadline has passed:

1. brings the domain to a defined state with the driver alone
   (:meth:`~workers.drivers.base.Driver.resume_after_crash`): a create's domain back
   in the run state it had (a memory save at the switchover cancelled); a revert's
   domain in the snapshot's run state if its restore had completed, else shut off
   (a QEMU still ``inmigrate`` is stopped; never left paused half-loaded);
2. appends what it did to ``<state dir>/guard.log`` (fsynced), removes the marker;
3. then, once the job's host lock is free (its step is not running: the worker
   died) and Redis answers, recovers the job as start-up recovery would (a create
   rolled back and failed, a revert or delete carried forward), retrying every
   interval while Redis is down. A worker that is alive but over budget sees its
   step fail (the migration it waited on was cancelled) and ends the job itself.

Every round it also restores a domain that a dead worker left down in the xl
driver's save/restore window (:meth:`~workers.drivers.base.Driver.recover_windows`:
saved, so destroyed, its RAM only in the window's file), without waiting on a budget,
and acts on the shutdown of a domain whose ``xl create`` monitor a suspend ended
(:meth:`~workers.drivers.base.Driver.watch_shutdowns`: a reboot after a memory snapshot
restarts it on domsnap's config), except for domains an operation holds; each action
goes to ``guard.log`` and the audit log.

One guard per state dir (a ``flock`` on ``guard.lock``; a second one waits for
it). It exits when the supervisor named in ``worker.pid`` is gone and no marker
and no recovery is left.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, UnknownDomain
from domsnap.settings import Settings, get_settings
from workers.engine import audit
from workers.engine.recovery import job_lock, recover_entry, request_of
from workers.host import Host, build_host

log = logging.getLogger("domsnap.guard")


def pid_alive(pid: int) -> bool:
    """A live process (a zombie, killed but not reaped, is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def supervisor_alive(host: Host) -> bool:
    try:
        return pid_alive(int(host.files.worker_pid_path.read_text().strip()))
    except (OSError, ValueError):
        return False


class Guard:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.pending: dict[str, str] = {}  # job id -> why, for jobs still to recover
        self.unsettled: set[str] = set()  # jobs whose domain could not be settled yet

    def check(self, now: float | None = None) -> int:
        """One round: act on every expired marker, retry pending recoveries. Returns
        how many markers are still in force."""
        now = time.time() if now is None else now
        down = self.host.driver.recover_windows(blocking=False)  # a dead worker's windows
        try:
            self.watch_shutdowns()
        except Exception as exc:  # noqa: BLE001 - never in the way of the markers below
            log.error("acting on shutdowns failed this round: %s: %s", type(exc).__name__, exc)
        markers = self.host.files.pause_markers()
        for uuid, marker in markers.items():
            if now >= marker["deadline"]:
                self.expire(uuid, marker)
        for job_id in list(self.pending):
            self.try_recover(job_id)
        return len(self.host.files.pause_markers()) + down

    def busy(self) -> set[str]:
        """Domains an operation holds: a journal names it (its job runs, or recovery has
        yet to settle it) or a pause marker is in force."""
        held = set(self.host.files.pause_markers())
        for entry in self.host.files.journals():
            request = entry.get("request")
            if isinstance(request, dict) and isinstance(request.get("domain"), str):
                held.add(request["domain"])
        return held

    def watch_shutdowns(self) -> None:
        """Act, as its lost ``xl create`` monitor would have, on every shut-down domain
        that domsnap suspended (:meth:`~workers.drivers.base.Driver.watch_shutdowns`),
        never on one an operation holds; each action in the guard's log and the audit."""
        held: list[set[str]] = []  # read once, when the driver first asks

        def busy(uuid: str) -> bool:
            if not held:
                held.append(self.busy())
            return uuid in held[0]

        for event in self.host.driver.watch_shutdowns(busy=busy):
            self.host.files.guard_record(event)
            details = {k: v for k, v in event.items()
                       if k not in ("event", "domain", "name", "outcome", "error")}
            audit.record(self.host.settings, self.host.store, who="domsnap-guard",
                         op="domain-on-shutdown", outcome=event.get("outcome", "failed"),
                         domain=event.get("domain"), name=event.get("name"),
                         error=event.get("error"), details=details)

    def expire(self, uuid: str, marker: dict[str, Any]) -> None:
        job_id = marker["job_id"]
        budget = round(marker["deadline"] - marker["since"], 3)
        entry = self.host.files.read_journal(job_id)
        try:
            state = self._settle(uuid, entry)
        except UnknownDomain:
            state = "gone (the host no longer has the domain)"
        except Exception as exc:  # noqa: BLE001 - recorded once, tried again next round
            if job_id not in self.unsettled:
                self.unsettled.add(job_id)
                log.error("job %s on %s: could not settle the domain yet: %s", job_id, uuid, exc)
                self.host.files.guard_record({"event": "settle-failed", "job_id": job_id,
                                              "domain": uuid, "error": f"{exc}"})
            return  # the marker stays: next round tries again (e.g. QMP was busy)
        self.unsettled.discard(job_id)
        why = (f"the pause budget ({budget:g} s) ran out; the host's guard brought the "
               f"domain to {state}")
        log.warning("job %s on %s: %s", job_id, uuid, why)
        self.host.files.guard_record({"event": "budget-expired", "job_id": job_id,
                                      "domain": uuid, "budget_s": budget, "state": state})
        self.host.files.clear_pausing(uuid, job_id)
        if entry is not None:
            self.pending[job_id] = why

    def _settle(self, uuid: str, entry: dict[str, Any] | None) -> str:
        """Host-only, no Redis: the domain to a defined state."""
        plan = entry.get("plan") if entry else None
        if entry is None or not isinstance(plan, dict):
            return "untouched (no journal)"
        req = request_of(entry)
        if req.op == "create":
            want = str(plan.get("domain_state", "running"))
        else:
            want = str(plan.get("final", "running"))
            if want == "shutoff":
                if self.host.driver.is_active(uuid):
                    self.host.driver.destroy(uuid)
                return "shutoff"
        return self.host.driver.resume_after_crash(uuid, state=want)

    def try_recover(self, job_id: str) -> None:
        why = self.pending[job_id]
        try:
            with job_lock(self.host, job_id, blocking=False) as got:
                if not got:
                    if self.host.files.read_journal(job_id) is None:
                        del self.pending[job_id]  # its step ended the job meanwhile
                    return  # its step still runs: it ends the job
                entry = self.host.files.read_journal(job_id)
                if entry is not None:
                    recover_entry(self.host, entry, why=why)
                    self.host.files.guard_record({"event": "recovered", "job_id": job_id})
                del self.pending[job_id]
        except DomsnapError as exc:  # Redis down: the journal stays, try again
            log.warning("job %s: recovery postponed: %s", job_id, exc)


def run(settings: Settings) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(settings.state_dir / "guard.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # one guard per host; a second waits its turn
    host = build_host(settings)
    guard = Guard(host)
    log.info("pause guard for %s (pid %d)", settings.state_dir, os.getpid())
    while True:
        try:
            left = guard.check()
        except Exception as exc:  # noqa: BLE001 - the guard must outlive any one failure
            log.error("guard round failed: %s: %s", type(exc).__name__, exc)
            left = 1
        # a window whose worker died a moment ago may still be locked by one of its
        # children: not orphaned yet, but the guard is the one to restore it (CI saw
        # the guard exit in that moment and the domain stay down until a restart)
        if (not left and not guard.pending and not supervisor_alive(host)
                and not host.driver.windows_open()):
            log.info("no worker and nothing to guard: exiting")
            return 0
        time.sleep(settings.guard_interval_s)


if __name__ == "__main__":
    raise SystemExit(run(get_settings()))
