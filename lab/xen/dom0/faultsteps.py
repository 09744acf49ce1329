"""The fault cycle of the lab's smoke process (``LAB_SUITE=faults``, after ``smoke``;
issue 9: "a worker killed mid-create and recovered, and the guard resuming a domain
whose xl save was killed mid-way"), on the smoke cycle's domain and the real xl:

1. **worker killed mid live create**: a memory snapshot is started (live: ``xl
   migrate`` into domsnap's receiver); once the memory copy runs, the whole worker
   (supervisor and pools: its process group) is SIGKILLed. ``xl migrate`` and the
   receiver run in sessions of their own and outlive it, and xl resumes the guest;
   a new worker's recovery then rolls the create back: the job fails "rolled back",
   no snapshot is listed, no image holds an internal snapshot of that name, the
   memory file is gone, and the guest counts on.
2. **``xl save`` killed mid-way**: with ``DOMSNAP_XL_MEMORY_STRATEGY=save`` (the
   worker restarted so), a memory snapshot is started and the ``xl save`` process is
   SIGKILLed while it writes. On Xen that leaves the domain suspended (``---ss-``,
   which no xl verb resumes): domsnap must resume it and fail the job cleanly.
3. Afterwards the worker runs again with the default strategy, and a disk-only
   snapshot and its delete go through.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import smoke
from smoke import IMAGES, RUNNING, StepFailed, console_size, domain_state, wait_ticks

if TYPE_CHECKING:
    from collections.abc import Callable

STATE_DIR = Path(os.environ.get("DOMSNAP_STATE_DIR", "/var/lib/domsnap"))
SNAPSHOT_DIR = Path(os.environ.get("DOMSNAP_SNAPSHOT_DIR", "/var/lib/xen/snapshots"))
WORKER_ARGS = ["worker", "--driver", "xl", "--host", smoke.HOST, "-c", "2",
               "--inflight-concurrency", "2", "--loglevel", "INFO"]


def _internal_snapshots(image: Path) -> list[str]:
    p = subprocess.run(["qemu-img", "snapshot", "-l", "-U", str(image)], capture_output=True,
                       text=True, check=False, timeout=120)
    rows = p.stdout.splitlines()[2:]  # "Snapshot list:" and the header
    return [r.split()[1] for r in rows if len(r.split()) > 1]


def _xl_save_pids() -> list[int]:
    """Processes running ``xl ... save ...`` (argv[0] is xl, a later word is save)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) == "xl" \
                and b"save" in argv[1:]:
            pids.append(int(d.name))
    return pids


def _gone(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited (a zombie counts: a worker this process
    started is reaped here; one init.sh started, by its shell); False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


class FaultSteps:
    def __init__(self, sm: smoke.Smoke) -> None:
        self.sm = sm
        self.restarts = 0

    def plan(self) -> list[tuple[str, Callable[[], str | tuple[str, dict[str, Any]]]]]:
        return [
            ("fault-worker-killed-mid-live-create", self.killed_mid_live),
            ("fault-xl-save-killed", self.xl_save_killed),
            ("fault-worker-killed-in-xl-save", self.worker_killed_in_xl_save),
            ("fault-after", self.after),
        ]

    # ------------------------------------------------------------ the worker

    def _worker_pid(self) -> int:
        return int((STATE_DIR / "worker.pid").read_text().strip())

    def _kill_worker(self) -> dict[str, Any]:
        """SIGKILL the worker's process group (supervisor and pools), as a crash would;
        what runs in sessions of its own (the guard, xl migrate, xl save) is left."""
        pid = self._worker_pid()
        pgid = os.getpgid(pid)
        if pgid == os.getpgid(0):
            raise StepFailed(f"the worker {pid} shares this process's group: not killing it")
        os.killpg(pgid, signal.SIGKILL)
        _gone(pid, 30)
        return {"killed_pid": pid, "killed_pgid": pgid}

    def _stop_worker(self) -> None:
        """A clean stop (SIGTERM: Celery's warm shutdown), waited for."""
        pid = self._worker_pid()
        os.kill(pid, signal.SIGTERM)
        if not _gone(pid, 300):
            raise StepFailed(f"the worker {pid} did not stop within 300 s of SIGTERM")

    def _start_worker(self, **env: str) -> Path:
        """A new worker (as init.sh starts one), its log in a file of its own; waits
        until it is alive with both pools ready."""
        self.restarts += 1
        log = self.sm.out / f"worker-{self.restarts + 1}.log"
        exe = shutil.which("domsnap")
        if exe is None:
            raise StepFailed("no domsnap on PATH")
        with log.open("ab") as fh:
            subprocess.Popen([exe, *WORKER_ARGS], stdout=fh, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, **env})
        self.sm.worker_log = log  # failure logs of later steps show this worker's
        deadline = time.monotonic() + float(os.environ.get("LAB_WORKER_TIMEOUT", "900"))
        while True:
            ready = log.read_text(errors="replace").count("ready.")
            alive = False
            try:
                alive = self.sm.client.store.host_alive(smoke.HOST)
            except Exception:  # noqa: BLE001 - Redis answers; the key comes with the worker
                pass
            if alive and ready >= 2:
                return log
            if time.monotonic() > deadline:
                raise StepFailed(f"the restarted worker is not up (alive={alive}, "
                                 f"pools ready={ready})", {"log": smoke.tail(log, 60)})
            time.sleep(1)

    # ------------------------------------------------------------ checks

    def _wait_event(self, job_id: str, step: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.step == step for e in self.sm.client.store.events(job_id)):
            job = self.sm.client.job(job_id)
            if job.state in ("succeeded", "failed"):
                raise StepFailed(f"the job ended ({job.state}) before its {step} step")
            if time.monotonic() > deadline:
                raise StepFailed(f"no {step} event within {timeout:.0f} s")
            time.sleep(0.1)

    def _wait_running(self, timeout: float) -> tuple[str, float]:
        t0 = time.monotonic()
        while True:
            state = domain_state()
            if state in RUNNING:
                return state, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise StepFailed(f"the domain is {state} {timeout:.0f} s after the fault",
                                 {"xl list": smoke.xl("list").stdout})
            time.sleep(0.5)

    def _rolled_back(self, job_id: str, name: str) -> dict[str, Any]:
        """The job failed and left nothing: not listed, no internal snapshot of that name
        in any image, no memory file; the guest counts on."""
        job = self.sm.client.wait(job_id, timeout=smoke.JOB_TIMEOUT)
        data: dict[str, Any] = {"state": job.state,
                                "error": job.error.model_dump() if job.error else None}
        if job.state != "failed":
            raise StepFailed(f"the job {job.state}; a create cut short must fail", data)
        names = [s.name for s in self.sm.client.snapshots(smoke.DOMAIN)]
        if name in names:
            raise StepFailed(f"{name} is listed after its create failed", data)
        uuid = self.sm.facts.get("domu_uuid", "")
        images = sorted(IMAGES.glob(f"{smoke.DOMAIN}-*.qcow2"))
        images += sorted((SNAPSHOT_DIR / uuid).glob("*.qcow2")) if uuid else []
        data["images_checked"] = [str(i) for i in images]
        for image in images:  # wherever the active images are now (overlays or bases)
            if name in _internal_snapshots(image):
                raise StepFailed(f"{image} still holds an internal snapshot {name}", data)
        left = sorted(str(p) for p in (SNAPSHOT_DIR / uuid).glob(f"{name}*")) if uuid else []
        if left:
            raise StepFailed(f"files of {name} are left: {left}", data)
        offset = console_size()
        wait_ticks(2, offset, 300)
        state, _ = self._wait_running(60)
        data["state_after"] = state
        return data

    def _came_back(self, job_id: str, name: str, data: dict[str, Any], *, restart: bool
                   ) -> tuple[str, float, str]:
        """After a fault: the domain runs again (with no worker yet, if ``restart``: a
        new one is started after), and the create was rolled back. Fills ``data``;
        returns (state, seconds until it ran, the job's error message)."""
        state, secs = self._wait_running(300)
        data["running_again_s"] = round(secs, 1)
        if restart:
            self._start_worker()
        data.update(self._rolled_back(job_id, name))
        return state, secs, (data.get("error") or {}).get("message", "")

    # ------------------------------------------------------------ the faults

    def killed_mid_live(self) -> tuple[str, dict[str, Any]]:
        job_id = self.sm.client.create(smoke.DOMAIN, name="f-live", type="internal")
        self._wait_event(job_id, "memory")
        time.sleep(1.0)  # into the copy (128 MiB live took ~14 s here)
        data = self._kill_worker()
        state, secs, msg = self._came_back(job_id, "f-live", data, restart=True)
        return (f"worker killed in the live copy; domain {state} again {secs:.1f}s later "
                f"without a worker; the new worker's recovery: job failed ({msg})", data)

    def _saving(self, name: str) -> tuple[str, list[int]]:
        """A worker on the save strategy, a memory create ``name`` submitted, and its
        ``xl save`` half a second into the write: (job id, the save's pids)."""
        self._stop_worker()
        self._start_worker(DOMSNAP_XL_MEMORY_STRATEGY="save")
        job_id = self.sm.client.create(smoke.DOMAIN, name=name, type="internal")
        self._wait_event(job_id, "memory")
        deadline = time.monotonic() + 120
        pids: list[int] = []
        while not pids:
            pids = _xl_save_pids()
            if time.monotonic() > deadline:
                raise StepFailed("no xl save process found")
            time.sleep(0.05)
        time.sleep(0.5)  # mid-write (a 128 MiB save took ~3-5 s here)
        return job_id, pids

    def xl_save_killed(self) -> tuple[str, dict[str, Any]]:
        job_id, pids = self._saving("f-save")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        data: dict[str, Any] = {"killed_xl_save": pids,
                                "xl_list_after_kill": smoke.xl("list", smoke.DOMAIN).stdout}
        state, secs, msg = self._came_back(job_id, "f-save", data, restart=False)
        return (f"xl save {pids} killed mid-write; domain {state} again {secs:.1f}s later; "
                f"job failed ({msg})", data)

    def worker_killed_in_xl_save(self) -> tuple[str, dict[str, Any]]:
        """The worker's process group SIGKILLed while ``xl save -p`` writes (issue 9:
        on the landed driver the save died with it, SIGPIPE, and the guest stayed
        ``---ss-``). The save runs in a session of its own, its output in files: it
        finishes; the new worker's start-up recovery rolls the create back and the
        guest runs on."""
        job_id, pids = self._saving("f-wsave")
        data = self._kill_worker()
        killed = time.monotonic()
        data["xl_save"] = pids
        data["xl_flags_after_kill"] = smoke.domain_flags()
        lived = [p for p in pids if not _gone(p, 0.5)]
        if not lived:
            raise StepFailed("xl save died with the worker", data)
        if not all(_gone(p, 600) for p in lived):
            raise StepFailed("xl save did not end within 600 s of the kill", data)
        data["xl_save_ended_s"] = round(time.monotonic() - killed, 1)
        data["xl_flags_after_save"] = flags = smoke.domain_flags()
        if flags != "--p---":  # `xl save -p` done: paused; died mid-write: ---ss-
            raise StepFailed(f"after the save the domain is {flags}, not paused: the save "
                             "did not complete", data)
        self._start_worker()
        data.update(self._rolled_back(job_id, "f-wsave"))
        msg = (data.get("error") or {}).get("message", "")
        return (f"worker killed during xl save {pids}: the save outlived it and completed "
                f"{data['xl_save_ended_s']} s after the kill (domain --p---); the new "
                f"worker's recovery: job failed ({msg}); domain {data['state_after']}", data)

    def after(self) -> tuple[str, dict[str, Any]]:
        self._stop_worker()
        self._start_worker()
        detail, data = self.sm.create("f-after", disk_only=True, type="internal")
        self.sm.delete("f-after")
        return f"default worker back: {detail}; deleted", data
