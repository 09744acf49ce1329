"""The lab's first smoke cycle, run inside dom0 as ONE long-lived process (every Python
start costs seconds under nested emulation): a PV domU with two qcow2 disks, then
through domsnap's Python client against the worker on the real ``xl``: create
(disk-only internal, memory + external, memory + internal), list, revert (the guest's
counter continues from the snapshot, its disk holds the snapshot-time value), delete
each snapshot.

Each step's outcome goes to ``OUT/results.json`` (rewritten after every step) and to
the console as ``LAB-STEP <name> ok|FAIL <seconds>s <detail>``. Exit 0 only if every
step passed. A step that fails stops the cycle (the later ones depend on it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOST = os.environ.get("DOMSNAP_HOST", "lab-dom0")
DOMAIN = "labdom"
IMAGES = Path("/var/lib/lab/images")
CONSOLE = Path(f"/var/log/xen/console/guest-{DOMAIN}.log")
XEN_LOGS = Path("/var/log/xen")
JOB_TIMEOUT = float(os.environ.get("LAB_JOB_TIMEOUT", "900"))
RUNNING = ("running", "blocked")
TICK = re.compile(r"DOMSNAP-TICK n=(\d+) disk=(-?\d+)")


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)


class StepFailed(Exception):
    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


def say(line: str) -> None:
    print(line, flush=True)


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text[-lines:])


def xl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["xl", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def xl_create(name: str, cfg: Path, attempts: int = 3) -> subprocess.CompletedProcess[str]:
    """xl create, again after a device-model start-up timeout (libxl's is compiled in;
    nested on a loaded host QEMU can miss it: "device model did not start: -9")."""
    for _ in range(attempts):
        proc = xl("create", str(cfg))
        if proc.returncode == 0 or not any(s in proc.stderr for s in (
                "device model did not start", "Post DM startup configs failed")):
            return proc
        xl("destroy", name)
        time.sleep(5)
    return proc


def ticks(offset: int = 0) -> list[tuple[int, int]]:
    """(n, disk) of every tick the guest printed after byte ``offset`` of its console."""
    try:
        with CONSOLE.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [(int(m[1]), int(m[2])) for m in TICK.finditer(text)]


def console_size() -> int:
    try:
        return CONSOLE.stat().st_size
    except FileNotFoundError:
        return 0


def wait_ticks(count: int, offset: int, timeout: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = ticks(offset)
        if len(seen) >= count:
            return seen
        if time.monotonic() > deadline:
            raise StepFailed(f"the guest printed {len(seen)} of {count} ticks in {timeout:.0f} s",
                             {"console_tail": tail(CONSOLE, 20)})
        time.sleep(0.5)


class Smoke:
    def __init__(self, out: Path, guest: Path, worker_log: Path) -> None:
        self.out = out
        self.guest = guest
        self.worker_log = worker_log
        self.steps: list[Step] = []
        self.started = time.time()
        self.client: Any = None
        self.facts: dict[str, Any] = {}
        try:
            self.prior: dict[str, Any] = json.loads((out / "results.json").read_text())
        except (OSError, ValueError):
            self.prior = {"steps": [], "facts": {}}
        self.prior.setdefault("steps", [])
        self.prior.setdefault("facts", {})

    # ------------------------------------------------------------ bookkeeping

    def save(self) -> None:
        # steps of an earlier suite of the same boot (capture, bench-live) are kept
        doc = {"host": HOST, "domain": DOMAIN, "started_at": self.started,
               "steps": self.prior["steps"] + [asdict(s) for s in self.steps],
               "facts": {**self.prior["facts"], **self.facts,
                         "plan": self.prior["facts"].get("plan", [])
                         + self.facts.get("plan", [])}}
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.out / "results.json")

    def step(self, name: str, fn: Callable[[], str | tuple[str, dict[str, Any]]]) -> bool:
        say(f"LAB-STEP-START {name}")
        t0 = time.monotonic()
        data: dict[str, Any] = {}
        try:
            got = fn()
            detail, data = (got, {}) if isinstance(got, str) else got
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is a result
            ok = False
            detail = f"{type(exc).__name__}: {exc}"
            data = dict(getattr(exc, "data", {}))
            data["traceback"] = traceback.format_exc()
        secs = time.monotonic() - t0
        st = Step(name=name, ok=ok, seconds=round(secs, 2), detail=detail, data=data)
        if not ok:
            st.logs = {"worker.log": tail(self.worker_log, 120),
                       "console": tail(CONSOLE, 30),
                       "xl list": xl("list").stdout}
            for f in sorted(XEN_LOGS.glob("*.log")):
                st.logs[f.name] = tail(f, 40)
        self.steps.append(st)
        self.save()
        say(f"LAB-STEP {name} {'ok' if ok else 'FAIL'} {secs:.1f}s {detail}")
        return ok

    # ------------------------------------------------------------ steps

    def worker_up(self) -> str:
        from domsnap.client import Client

        self.client = Client()
        deadline = time.monotonic() + float(os.environ.get("LAB_WORKER_TIMEOUT", "900"))
        while True:
            alive = False
            try:
                alive = self.client.store.host_alive(HOST)
            except Exception:  # noqa: BLE001 - Redis or the worker still starting
                pass
            ready = self.worker_log.read_text(errors="replace").count("ready.") \
                if self.worker_log.exists() else 0
            if alive and ready >= 2:
                return f"worker {HOST} alive, both pools ready"
            if time.monotonic() > deadline:
                raise StepFailed(f"worker not up (alive={alive}, pools ready={ready})")
            time.sleep(1)

    def domu_create(self) -> tuple[str, dict[str, Any]]:
        IMAGES.mkdir(parents=True, exist_ok=True)
        kernel, ramdisk = IMAGES / "vmlinuz", IMAGES / "initramfs.cpio.gz"
        shutil.copyfile(self.guest / "vmlinuz", kernel)
        shutil.copyfile(self.guest / "initramfs.cpio.gz", ramdisk)
        disks = []
        for vdev in ("xvda", "xvdb"):
            path = IMAGES / f"{DOMAIN}-{vdev}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"],
                           check=True)
            disks.append(f'"format=qcow2, vdev={vdev}, access=rw, backendtype=qdisk, '
                         f'target={path}"')
        cfg = IMAGES / f"{DOMAIN}.cfg"
        cfg.write_text("\n".join([
            f'name = "{DOMAIN}"', 'type = "pv"', "memory = 128", "vcpus = 1",
            f'kernel = "{kernel}"', f'ramdisk = "{ramdisk}"',
            'extra = "console=hvc0 quiet domsnap.tick=1"',
            f"disk = [ {', '.join(disks)} ]", ""]))
        t0 = time.monotonic()
        proc = xl_create(DOMAIN, cfg)
        if proc.returncode != 0:
            raise StepFailed(f"xl create failed ({proc.returncode}): {proc.stderr.strip()}")
        created = time.monotonic() - t0
        seen = wait_ticks(2, 0, 600)
        booted = time.monotonic() - t0
        deadline = time.monotonic() + 120
        while True:
            try:
                host, info = self.client.resolve(DOMAIN)
                if host == HOST:
                    break
            except Exception:  # noqa: BLE001 - the next heartbeat lists it
                pass
            if time.monotonic() > deadline:
                raise StepFailed(f"{DOMAIN} never appeared in {HOST}'s inventory")
            time.sleep(1)
        listed = time.monotonic() - t0
        self.facts["domu_uuid"] = info.uuid
        return (f"xl create {created:.1f}s, 2 ticks {booted:.1f}s, in inventory {listed:.1f}s "
                f"(last tick {seen[-1]})",
                {"xl_create_s": round(created, 2), "ticks_s": round(booted, 2),
                 "inventory_s": round(listed, 2)})

    def _job(self, job_id: str) -> Any:
        job = self.client.wait(job_id, timeout=JOB_TIMEOUT)
        if job.state != "succeeded":
            err = job.error.model_dump() if job.error is not None else None
            raise StepFailed(f"job {job.op} {job.name} {job.state}: "
                             f"{err['message'] if err else '?'}", {"error": err})
        return job

    @staticmethod
    def _job_data(job: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"job_id": job.job_id}
        if job.started_at and job.finished_at:
            data["worker_s"] = round(job.finished_at - job.started_at, 2)
            data["queue_s"] = round(job.started_at - job.submitted_at, 2)
        return data

    def create(self, name: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        before = ticks()
        job = self._job(self.client.create(DOMAIN, name=name, **kwargs))
        rec = self.client.snapshot(DOMAIN, name)
        data = self._job_data(job)
        data.update({"pause_ms": rec.pause_ms, "memory_save_ms": rec.memory_save_ms,
                     "memory_bytes": rec.memory_bytes, "memory_file": rec.memory_file,
                     "disks": [d.model_dump() for d in rec.disks],
                     "memory_strategy": rec.memory_strategy,
                     "memory_fallback": rec.memory_fallback,
                     "memory_rounds": rec.memory_rounds,
                     "memory_page_records": rec.memory_page_records,
                     "tick_before": before[-1][0] if before else None})
        after = ticks()
        data["tick_after"] = after[-1][0] if after else None
        state = domain_state()
        if state not in RUNNING:
            raise StepFailed(f"after the create the domain is {state}", data)
        self.facts.setdefault("snapshots", {})[name] = data
        pause = "" if rec.pause_ms is None else f", pause {rec.pause_ms / 1000:.1f}s"
        if rec.memory_file is not None:
            if rec.memory_strategy is None:
                raise StepFailed("a memory snapshot without its memory strategy recorded", data)
            pause += (f", memory {rec.memory_strategy}"
                      + (f" ({rec.memory_rounds} rounds)" if rec.memory_rounds else "")
                      + (f", fallback: {rec.memory_fallback}" if rec.memory_fallback else ""))
        return f"{job.op} ok in {data.get('worker_s')}s on the worker{pause}; domain {state}", data

    def listing(self, want: tuple[str, ...] = ("s-disk", "s-ext", "s-mem"),
                want_current: str = "s-mem") -> tuple[str, dict[str, Any]]:
        names = sorted(s.name for s in self.client.snapshots(DOMAIN))
        current = self.client.current(DOMAIN)
        if names != sorted(want) or current != want_current:
            raise StepFailed(f"listed {names}, current {current}; want {sorted(want)}, "
                             f"current {want_current}")
        return f"{names}, current {current}", {"names": names, "current": current}

    def revert(self, name: str = "s-mem") -> tuple[str, dict[str, Any]]:
        snap = self.facts["snapshots"][name]
        # let the guest run well past the snapshot, so a revert shows as the counter going back
        if snap["tick_after"] is not None:
            target = snap["tick_after"] + 5
            deadline = time.monotonic() + 300
            while (ticks() or [(0, 0)])[-1][0] < target and time.monotonic() < deadline:
                time.sleep(0.5)
        offset = console_size()
        latest = (ticks() or [(0, 0)])[-1][0]
        job = self._job(self.client.revert(DOMAIN, name))
        data = self._job_data(job)
        data.update({"tick_before_revert": latest, "snapshot_tick_window":
                     [snap["tick_before"], snap["tick_after"]]})
        # the first tick of the restored guest is where the counter goes down
        deadline = time.monotonic() + 300
        first: tuple[int, int] | None = None
        while first is None:
            prev = latest
            for n, disk in ticks(offset):
                if n < prev:
                    first = (n, disk)
                    break
                prev = n
            if first is None:
                if time.monotonic() > deadline:
                    raise StepFailed("no tick of the restored guest within 300 s",
                                     {**data, "console_tail": tail(CONSOLE, 20)})
                time.sleep(0.5)
        assert first is not None
        n, disk = first
        data.update({"first_tick": n, "first_tick_disk": disk, "state": domain_state()})
        lo, hi = snap["tick_before"] or 0, (snap["tick_after"] or latest) + 1
        if not lo < n <= hi:
            raise StepFailed(f"restored guest counts on from {n}, not from the snapshot's "
                             f"window ({lo}, {hi}]", data)
        if disk != n - 1:
            raise StepFailed(f"restored guest's disk holds {disk}, its memory {n - 1}: "
                             "memory and disks disagree", data)
        if data["state"] not in RUNNING:
            raise StepFailed(f"after the revert the domain is {data['state']}", data)
        return (f"revert ok in {data.get('worker_s')}s; counter {latest} -> {n} "
                f"(disk {disk}); domain {data['state']}", data)

    def delete(self, name: str) -> tuple[str, dict[str, Any]]:
        job = self._job(self.client.delete(DOMAIN, name))
        data = self._job_data(job)
        left = sorted(s.name for s in self.client.snapshots(DOMAIN))
        data["left"] = left
        if name in left:
            raise StepFailed(f"{name} still listed after its delete", data)
        state = domain_state()
        if state not in RUNNING:
            raise StepFailed(f"after the delete the domain is {state}", data)
        return f"delete ok in {data.get('worker_s')}s; left {left}; domain {state}", data

    def images(self) -> tuple[str, dict[str, Any]]:
        """What the disk images look like at the end (facts, no check)."""
        info: dict[str, Any] = {}
        for f in sorted(IMAGES.glob("*.qcow2")):
            p = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(f)],
                               capture_output=True, text=True, check=False)
            info[f.name] = json.loads(p.stdout) if p.returncode == 0 else p.stderr
        p = xl("list", "-l", DOMAIN)
        self.facts["xl_list_l_end"] = p.stdout
        return f"{len(info)} images", {"images": info}

    def run(self, suites: list[str]) -> int:
        plan: list[tuple[str, Callable[[], str | tuple[str, dict[str, Any]]]]] = [
            ("worker-up", self.worker_up)]
        if "smoke" in suites:
            plan += self.smoke_plan()
        if "faults" in suites:  # on the smoke cycle's domain
            from faultsteps import FaultSteps

            if "smoke" not in suites:
                plan.append(("domu-create", self.domu_create))
            plan += FaultSteps(self).plan()
        if "lvm" in suites:
            plan += self.lvm_plan()
        return self.run_plan(plan)

    def lvm_plan(self) -> list[tuple[str, Callable[[], str | tuple[str, dict[str, Any]]]]]:
        from lvmsteps import LvmSteps

        return LvmSteps(self).plan()

    def smoke_plan(self) -> list[tuple[str, Callable[[], str | tuple[str, dict[str, Any]]]]]:
        return [
            ("domu-create", self.domu_create),
            ("create-disk-only-internal",
             lambda: self.create("s-disk", disk_only=True, type="internal")),
            ("create-memory-external", lambda: self.create("s-ext", type="external")),
            ("create-memory-internal", lambda: self.create("s-mem", type="internal")),
            ("list", self.listing),
            ("revert-memory-internal", self.revert),
            ("delete-s-mem", lambda: self.delete("s-mem")),
            ("delete-s-ext", lambda: self.delete("s-ext")),
            ("delete-s-disk", lambda: self.delete("s-disk")),
        ]

    def run_plan(self, plan: list[tuple[str, Callable[[], str | tuple[str, dict[str, Any]]]]]
                 ) -> int:
        self.facts["plan"] = [name for name, _ in plan]
        self.save()
        failed = False
        for name, fn in plan:
            if not self.step(name, fn):
                failed = True
                break
        self.step("images", self.images)
        self.facts["total_s"] = round(time.time() - self.started, 1)
        self.save()
        return 1 if failed else 0


def use_domain(name: str) -> None:
    """Point the cycle's helpers (ticks, domain_state, the steps) at domain ``name``."""
    global DOMAIN, CONSOLE
    DOMAIN = name
    CONSOLE = Path(f"/var/log/xen/console/guest-{name}.log")


def domain_flags() -> str | None:
    """The state column of ``xl list DOMAIN`` (e.g. ``-b----``); None if not listed."""
    proc = xl("list", DOMAIN)
    if proc.returncode != 0:
        return None
    return str(proc.stdout.splitlines()[-1].split()[4])


def domain_state() -> str:
    flags = domain_flags()
    if flags is None:
        return "shutoff"
    for flag, state in (("p", "paused"), ("s", "shutdown"), ("c", "crashed"),
                        ("d", "dying"), ("r", "running"), ("b", "blocked")):
        if flag in flags:
            return state
    return "running"  # no flag: runnable, waiting for a CPU (Xen shows "------")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--guest", type=Path, required=True)
    ap.add_argument("--worker-log", type=Path, required=True)
    ap.add_argument("--suite", action="append", choices=["smoke", "faults", "lvm"],
                    help="which cycles to run (repeatable; default smoke)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return Smoke(args.out, args.guest, args.worker_log).run(args.suite or ["smoke"])


if __name__ == "__main__":
    sys.modules.setdefault("smoke", sys.modules["__main__"])  # lvmsteps, faultsteps import it
    sys.exit(main())
