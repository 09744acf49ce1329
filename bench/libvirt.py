"""Guest-visible pause and wall time of a live snapshot (memory + both disks), domsnap
against libvirt: the same guest, the same disks, the same run (issue 11, benchmark 1).

Full mode (needs libvirt: ``bash scripts/setup-libvirt.sh`` installs it from Debian
packages and starts ``virtlogd`` and ``libvirtd``, idempotent)::

    bash scripts/setup-libvirt.sh
    .venv/bin/python -m bench.libvirt [--runs 5] [--memory 512,2048] [--workload idle,dirty]

For each configuration (guest memory x workload) it boots two identical guests: one
domain of domsnap's qemu driver (a real ``domsnap worker`` over Redis) and one libvirt
domain (``virsh -c qemu:///system``): the test guest's kernel and initramfs, the same
command line, one vCPU, q35, two virtio-blk qcow2 disks, the serial console to a file,
no graphics. The guest runs a ticker (``domsnap.ticker=0.01``: a console line every
10 ms) and, for the ``dirty`` workload, rewrites 100 MiB of its RAM in a loop
(``domsnap.dirty=100``). Only the guest being snapshotted runs; the other is paused.
On a shared machine both tools' processes (this one and its children: the worker, the
CLI, domsnap's QEMU; libvirtd, virtlogd and libvirt's QEMU) run at ``--nice`` (default
-10, as root) so that the other load starves them alike and less.

Modes, interleaved round by round (the order rotates and the tool that goes first
alternates): libvirt internal (``snapshot-create-as``: savevm into the first qcow2),
libvirt external (``--memspec ... --diskspec ... --live``), and domsnap internal and
external (memory to a file, disks internal qcow2 snapshots or overlays), each from the
CLI (``python -m domsnap snapshot-create``, a new process) and from the Python client
(``Client.create`` + ``Client.wait`` in this process). Per snapshot:

- guest-visible pause: the largest gap between the arrivals of the ticker's lines on
  the host (``bench.console_watch``, a separate process polling the console file every
  0.5 ms) around the stop, i.e. overlapping QEMU's [STOP, RESUME]. Under TCG the
  guest's clock stops with the VM, so only the host side shows the pause. The gap
  includes up to one ticker period (reported). Also the longest gap over the whole
  command (during a live memory copy under TCG the guest runs, but slowly);
- host-side STOP -> RESUME from QEMU's event timestamps: libvirt's through ``virsh
  qemu-monitor-event --loop --timestamp``, domsnap's as its job recorded them;
- wall time of the command (virsh, the domsnap CLI, the client call).

Results: min / median / max per mode and configuration, and the ratios domsnap/libvirt
against the targets of issue 11, written to the "Pause and wall time against libvirt"
section of docs/benchmarks.md; each full run is also appended to
``bench/results/libvirt.jsonl`` and earlier runs are shown as history.

Quick mode (``--quick``, for CI's ``bench`` suite; no libvirt): domsnap only, one
256 MiB idle guest, one run of each domsnap mode; ``--no-write`` leaves the docs alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import libvirt_report
from bench.console_watch import dark_around, largest_gap, read_arrivals
from bench.harness import cli_env
from bench.metadata import machine
from bench.virsh import LibvirtDomain, available, domain_xml
from domsnap.client import Client
from tests.integration.cluster import Cluster, Domain, guest_cmdline
from tests.vm.guest import ensure_guest

REPO = Path(__file__).resolve().parents[1]
TICKER_S = 0.01
DIRTY_MIB = 100
LV_MODES = ("lv-int", "lv-ext")
DS_MODES = ("ds-int-cli", "ds-int-py", "ds-ext-cli", "ds-ext-py")
SETTLE_S = 1.0   # the guest runs this long before each snapshot (ticker baseline)
AFTER_S = 0.6    # and this long after, so the first line after the pause has arrived


@dataclass
class Sample:
    wall_ms: float
    gap_ms: float       # guest-visible pause: the largest gap over [STOP, RESUME]
    longest_ms: float   # the largest gap over the whole command
    period_ms: float
    pause_ms: float
    dark_before_ms: float = 0.0  # of the gap: the part before STOP
    dark_after_ms: float = 0.0   # and after RESUME
    hops: dict[str, float] = field(default_factory=dict)


@dataclass
class Guest:
    """One guest of a configuration and the watcher timing its console."""

    console: Path
    arrivals: Path
    watcher: subprocess.Popen[bytes]
    ds: Domain | None = None
    lv: LibvirtDomain | None = None
    running: bool = True

    def stop_watching(self) -> None:
        self.watcher.terminate()
        self.watcher.wait(timeout=10)


def renice(pid: int, nice: int) -> None:
    """Set the nice value of every thread of ``pid`` (Linux nice is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        except (ProcessLookupError, PermissionError):
            pass


def prioritise(nice: int) -> None:
    """Give this process (and so the worker, the CLI, the watchers and domsnap's QEMU,
    its children), libvirtd and virtlogd the same raised priority over the rest of the
    shared machine, so that both tools' guests and command paths are starved alike."""
    if nice == 0 or os.geteuid() != 0:
        return
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    for pidfile in ("/run/libvirtd.pid", "/run/virtlogd.pid"):
        try:
            renice(int(Path(pidfile).read_text().strip()), nice)
        except (FileNotFoundError, ValueError):
            pass


def libvirt_qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def start_watcher(console: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.console_watch", str(console),
                             str(out)], cwd=REPO, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_ticking(g: Guest, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(read_arrivals(g.arrivals)) < 20:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ticker on {g.console} after {timeout} s")
        time.sleep(0.5)


def set_running(g: Guest, running: bool) -> None:
    """Pause or unpause the guest (only the one being measured runs)."""
    if g.running == running:
        return
    if g.lv is not None:
        (g.lv.resume if running else g.lv.suspend)()
    elif g.ds is not None:
        (g.ds.unpause if running else g.ds.pause)()
    g.running = running


def domsnap_hops(client: Client, job_id: str, end_epoch: float) -> dict[str, float]:
    """Where a domsnap job's wall time went (ms): queued -> started, started ->
    finished, finished -> the caller saw it; and each progress step's offset."""
    job = client.store.get_job(job_id, follow=True)
    hops: dict[str, float] = {}
    if job.started_at and job.finished_at:
        hops["queue+admission"] = (job.started_at - job.submitted_at) * 1000
        hops["run"] = (job.finished_at - job.started_at) * 1000
        hops["notice"] = (end_epoch - job.finished_at) * 1000
    for ev in client.store.events(job.job_id, 0):
        hops.setdefault(f"@{ev.step}", (ev.ts - job.submitted_at) * 1000)
    return hops


def snapshot_once(mode: str, g: Guest, snap: str, client: Client, lv_dir: Path) -> Sample:
    """Take one snapshot in ``mode`` of the running guest ``g`` and measure it."""
    time.sleep(SETTLE_S)
    t0, w0 = time.monotonic(), time.time()
    job_id = None
    if mode == "lv-int":
        assert g.lv is not None
        g.lv.snapshot_internal(snap)
    elif mode == "lv-ext":
        assert g.lv is not None
        g.lv.snapshot_external(snap, lv_dir)
    else:
        assert g.ds is not None
        kind = "internal" if "-int-" in mode else "external"
        if mode.endswith("-cli"):
            proc = subprocess.run([sys.executable, "-m", "domsnap", "snapshot-create",
                                   g.ds.name, "-n", snap, "--type", kind, "--json"],
                                  env=cli_env(g.ds.host.env, g.ds.host.state_dir),
                                  capture_output=True, text=True,
                                  timeout=900, stdin=subprocess.DEVNULL, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"domsnap snapshot-create {snap} failed: {proc.stderr}")
            job_id = json.loads(proc.stdout).get("job_id")
        else:
            job_id = client.create(g.ds.name, name=snap, type=kind)  # type: ignore[arg-type]
            job = client.wait(job_id, timeout=900)
            if job.state != "succeeded":
                raise RuntimeError(f"domsnap create {snap}: {job.error}")
    t1, w1 = time.monotonic(), time.time()
    time.sleep(AFTER_S)
    offset = w0 - t0  # epoch - monotonic: QEMU stamps its events with the epoch
    if g.lv is not None:
        stop, resume = g.lv.pause_window(w0, w1)
        hops: dict[str, float] = {}
    else:
        assert g.ds is not None and job_id is not None
        stop, resume = domsnap_window(client, job_id)
        hops = domsnap_hops(client, job_id, w1)
        rec = client.snapshot(g.ds.name, snap)
        if rec.memory_save_ms is not None:  # the live copy, without the fsync after it
            hops["memory save"] = rec.memory_save_ms
    arrivals = read_arrivals(g.arrivals)
    longest, period = largest_gap(arrivals, t0, t1)
    gap, _ = largest_gap(arrivals, stop - offset, resume - offset)
    before, after = dark_around(arrivals, stop - offset, resume - offset)
    return Sample(wall_ms=(t1 - t0) * 1000, gap_ms=gap, longest_ms=longest,
                  period_ms=period, pause_ms=(resume - stop) * 1000, hops=hops,
                  dark_before_ms=before, dark_after_ms=after)


def domsnap_window(client: Client, job_id: str) -> tuple[float, float]:
    """(STOP, RESUME) epoch seconds of a domsnap create: QEMU's event stamps, which the
    job's ``resumed`` event carries."""
    job = client.store.get_job(job_id, follow=True)
    for ev in client.store.events(job.job_id, 0):
        if ev.step == "resumed" and "stopped_at" in ev.data:
            return float(ev.data["stopped_at"]), float(ev.data["resumed_at"])
    raise RuntimeError(f"job {job_id} has no resumed event with the pause's times")


def round_order(i: int, with_libvirt: bool) -> list[str]:
    """Round ``i``: the tool that goes first alternates, the modes rotate."""
    ds = list(DS_MODES[i % len(DS_MODES):] + DS_MODES[:i % len(DS_MODES)])
    if not with_libvirt:
        return ds
    lv = list(LV_MODES if i % 2 == 0 else LV_MODES[::-1])
    return lv + ds if i % 2 == 0 else ds + lv


def run_config(cluster: Cluster, host: str, base: Path, memory: int, workload: str,
               runs: int, with_libvirt: bool) -> dict[str, list[Sample]]:
    tag = f"{memory}-{workload}"
    append = f"domsnap.ticker={TICKER_S:g}" + (f" domsnap.dirty={DIRTY_MIB}"
                                               if workload == "dirty" else "")
    guests: dict[str, Guest] = {}
    work = base / tag
    work.mkdir(parents=True)
    try:
        dom = cluster.create_domain(host, f"bench-ds-{tag}-{cluster.suffix}", memory=memory,
                                    append=append)
        cluster.wait_inventory(dom)
        guests["ds"] = Guest(dom.console, work / "ds.arrivals",
                             start_watcher(dom.console, work / "ds.arrivals"), ds=dom)
        if with_libvirt:
            kernel, initrd = ensure_guest()
            disks = [cluster.make_disk(dom.host, f"lv-{tag}-vd{c}") for c in "ab"]
            console = work / "lv-console.log"
            lv = LibvirtDomain(f"domsnap-bench-{tag}-{cluster.suffix}", console, disks,
                               work / "lv-events.log")
            guests["lv"] = Guest(console, work / "lv.arrivals",
                                 start_watcher(console, work / "lv.arrivals"), lv=lv)
            lv.create(domain_xml(lv.name, memory_mib=memory, kernel=kernel, initrd=initrd,
                                 cmdline=guest_cmdline(1.0, append), disks=disks,
                                 console=console), work / "lv.xml")
            renice(libvirt_qemu_pid(lv.name), os.getpriority(os.PRIO_PROCESS, 0))
        for g in guests.values():
            wait_ticking(g)
        client = cluster.client()
        out: dict[str, list[Sample]] = {}
        for i in range(runs):
            for mode in round_order(i, with_libvirt):
                me = "lv" if mode.startswith("lv") else "ds"
                for k, g in guests.items():
                    if k != me:
                        set_running(g, False)
                set_running(guests[me], True)
                s = snapshot_once(mode, guests[me], f"r{i}-{mode}", client, work)
                out.setdefault(mode, []).append(s)
                print(f"{tag} run {i} {mode}: wall {s.wall_ms:.0f} ms, gap {s.gap_ms:.0f} ms "
                      f"(longest {s.longest_ms:.0f}, period {s.period_ms:.0f}), "
                      f"STOP-RESUME {s.pause_ms:.0f} ms (dark {s.dark_before_ms:.0f} before, "
                      f"{s.dark_after_ms:.0f} after), "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        return out
    finally:
        for g in guests.values():
            g.stop_watching()
            if g.lv is not None:
                g.lv.destroy()
        cluster.destroy_all()


def summarize(samples: list[Sample]) -> dict[str, Any]:
    def mmm(xs: list[float]) -> list[float]:
        return [min(xs), statistics.median(xs), max(xs)]

    hop_keys = sorted({k for s in samples for k in s.hops})
    return {"n": len(samples),
            "wall": mmm([s.wall_ms for s in samples]),
            "gap": mmm([s.gap_ms for s in samples]),
            "longest": mmm([s.longest_ms for s in samples]),
            "pause": mmm([s.pause_ms for s in samples]),
            "period": statistics.median([s.period_ms for s in samples]),
            "dark": [statistics.median([s.dark_before_ms for s in samples]),
                     statistics.median([s.dark_after_ms for s in samples])],
            "hops": {k: statistics.median([s.hops[k] for s in samples if k in s.hops])
                     for k in hop_keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, help="rounds per configuration (5; --quick: 1)")
    ap.add_argument("--memory", help="guest MiB, comma separated (512,2048; --quick: 256)")
    ap.add_argument("--workload", help="idle and/or dirty (idle,dirty; --quick: idle)")
    ap.add_argument("--quick", action="store_true",
                    help="domsnap only (no libvirt), one 256 MiB idle guest, one run")
    ap.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--partial", default="/var/tmp/domsnap-bench-libvirt.json",
                    help="where each configuration's results are written as it ends")
    ap.add_argument("--nice", type=int, default=-10,
                    help="nice value for both tools' processes and guests (root only; 0: "
                         "leave as is)")
    args = ap.parse_args()
    defaults = (1, "256", "idle") if args.quick else (5, "512,2048", "idle,dirty")
    args.runs = args.runs or defaults[0]
    args.memory = args.memory or defaults[1]
    args.workload = args.workload or defaults[2]
    with_libvirt = not args.quick
    if with_libvirt and not available():
        raise SystemExit("libvirtd does not answer on qemu:///system: run "
                         "bash scripts/setup-libvirt.sh (or use --quick)")
    prioritise(args.nice)
    where = machine()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = libvirt_report.git_rev()  # the code that runs (uncommitted edits aside)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dsbl-", dir="/var/tmp") as tmp:
        cluster = Cluster(Path(tmp), suffix=uuidlib.uuid4().hex[:6])
        host = f"bench-lv-{cluster.suffix}"
        try:
            hh = cluster.start_worker(host)
            # the CLI's bytecode compiled once into its cache (bench.harness.cli_env)
            subprocess.run([sys.executable, "-m", "domsnap", "snapshot-create", "--help"],
                           env=cli_env(hh.env, hh.state_dir), capture_output=True, check=False)
            for memory in [int(m) for m in args.memory.split(",")]:
                for workload in args.workload.split(","):
                    t = time.monotonic()
                    samples = run_config(cluster, host, Path(tmp) / "runs", memory, workload,
                                         args.runs, with_libvirt)
                    results[f"{memory}-{workload}"] = {
                        "memory": memory, "workload": workload,
                        "load": list(os.getloadavg()), "seconds": time.monotonic() - t,
                        "modes": {m: summarize(s) for m, s in samples.items()},
                        "samples": {m: [vars(x) for x in s] for m, s in samples.items()}}
                    if not args.quick:  # survives a crash of a long run
                        Path(args.partial).write_text(json.dumps(results))
        finally:
            for name in list(cluster.hosts):
                cluster.stop_worker(name)
            cluster.destroy_all()
            cluster.cleanup_redis()
    run = {"started": started, "machine": where, "runs": args.runs, "quick": args.quick,
           "nice": args.nice if os.geteuid() == 0 else 0,
           "commit": commit, "results": results,
           # fewer configurations than the full set: kept as history, never the tables
           "partial": (args.memory, args.workload) != ("512,2048", "idle,dirty")}
    lines = libvirt_report.render(run, libvirt_report.history())
    print("\n".join(lines))
    if not args.no_write and not args.quick:
        libvirt_report.save(run, lines, Path(args.out))


if __name__ == "__main__":
    main()
