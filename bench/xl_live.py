"""The pause of an xl memory snapshot: live (``xl migrate`` into domsnap's receiver, the
guest suspended for the last round only) against ``xl save -p`` (suspended for the whole
RAM write), on the same domain, alternating in the same run.

The domains run on the stand-in xl (tests/xlstandin: real QEMU processes, the test
guest, two qcow2 disks, internal snapshots of both); the xl driver runs in-process (no
queue), once with ``memory_strategy="live"`` and once with ``"save"``. The stand-in is
not Xen: its live rounds are QEMU's precopy and its save a QEMU migration of a stopped
guest, both far faster than libxc's; the ratio says what the live path saves relative to
a save, not what a dom0 takes (the nested lab measured 0.53 s live against 4.49 s for a
128 MiB PV domU).

Run: .venv/bin/python -m bench.xl_live [--runs 5] [--memory 128 512] [--workload idle dirty]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.report import write_section
from bench.xl_strategies import XL, _domain
from tests.integration.cluster import standin_env
from workers.block.lvm import Lvm
from workers.block.qemu_img import QemuImg
from workers.drivers.base import DiskOp
from workers.drivers.xl import XlDriver
from workers.hostio.runner import SubprocessRunner

REPO = Path(__file__).resolve().parents[1]
# (MiB, workload) -> strategy -> runs
Results = dict[tuple[int, str], dict[str, list[tuple[float, float, int]]]]
WORKLOADS = ("idle", "dirty")


def dirty_mib(size: int) -> int:
    """What the dirtying guest rewrites in a loop (the test guest's ``domsnap.dirty``):
    a quarter of its RAM, at most 100 MiB (bench/libvirt.py's figure)."""
    return min(100, size // 4)


def run(root: Path, runs: int, sizes: list[int], workloads: list[str]) -> Results:
    runner = SubprocessRunner()
    drivers = {s: XlDriver(root / "state", runner, img=QemuImg(runner), lvm=Lvm(runner),
                           binary=XL, xen_run_dir=root / "run", timeout=600,
                           memory_strategy=s) for s in ("live", "save")}
    out: Results = {}
    for size in sizes:
        for load in workloads:
            extra = f"domsnap.dirty={dirty_mib(size)}" if load == "dirty" else ""
            uuid = _domain(root, f"bench-live-{size}-{load}", size, stub=False, extra=extra)
            try:
                drivers["live"].list_domains()
                out[(size, load)] = _alternate(root, drivers, uuid, size, runs)
            finally:
                drivers["live"].destroy(uuid)  # its QEMU goes with it
    return out


def _alternate(root: Path, drivers: dict[str, XlDriver], uuid: str, size: int,
               runs: int) -> dict[str, list[tuple[float, float, int]]]:
    out: dict[str, list[tuple[float, float, int]]] = {"live": [], "save": []}
    for i in range(runs):
        for strategy, drv in drivers.items():
            name = f"b{i}{strategy[0]}"
            cfg = drv.domain_config(uuid)
            ops = [DiskOp(vdev=d.vdev, path=str(d.target), format=d.format,
                          type="internal", backend=d.backendtype) for d in cfg.disks]
            ops = [replace(op, strategy=s) for op, s in
                   zip(ops, drv.disk_strategies(uuid, ops, active=True), strict=True)]
            mem = root / "snaps" / f"{size}-{name}.save"
            res = drv.capture(uuid, name=name, memory_file=mem, disks=ops,
                              progress=lambda step, msg: None)
            assert res.memory_strategy == strategy, (res.memory_strategy,
                                                     res.memory_fallback)
            assert res.pause_ms is not None and res.memory_save_ms is not None
            out[strategy].append((res.pause_ms, res.memory_save_ms,
                                  res.memory_bytes or 0))
            drv.undo_disks(uuid, name=name, disks=ops)
            mem.unlink()
    return out


def report(res: Results, args: argparse.Namespace, loadavg: tuple[float, float, float]) -> None:
    lines = [
        f"Measured {dt.date.today().isoformat()} with `python -m bench.xl_live --runs "
        f"{args.runs}`: the xl driver in-process against the stand-in xl (`tests/xlstandin`:"
        " real QEMU, TCG), the test guest with two qcow2 disks, idle but for its counter "
        "or dirtying (`domsnap.dirty`: it rewrites a quarter of its RAM, at most 100 MiB, "
        "in a loop), "
        "a memory + internal snapshot of both disks, live and `xl save -p` alternating on "
        f"the same domain; medians of {args.runs}. Pause: live, libxl's \"guest has "
        "suspended\" to the end of the resume (xl's -vvv lines, timestamped as written); "
        "save, `xl save -p` to `xl unpause`. The stand-in is QEMU, not libxc: see the "
        "module docstring for what a dom0 takes.",
        "",
        "| guest RAM | workload | strategy | pause (ms) | whole memory save (ms) | "
        "memory file (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ratios = []
    for (size, load), by in res.items():
        med = {s: [statistics.median(x[k] for x in v) for k in range(3)]
               for s, v in by.items()}
        for s in ("live", "save"):
            p, m, b = med[s]
            lines.append(f"| {size} MiB | {load} | {s} | {p:.0f} | {m:.0f} | {b / 1e6:.1f} |")
        ratios.append(f"{size} MiB {load}: "
                      f"**{med['save'][0] / max(med['live'][0], 0.001):.1f}x**")
    lines += ["", "`xl save -p` pauses the guest longer than the live path by "
              + ", ".join(ratios) + "; the live path takes longer in all (the rounds send "
              "dirtied pages again).", "",
              f"Machine: {os.cpu_count()} cores, TCG, load average at the end "
              f"{loadavg[0]:.1f} / {loadavg[1]:.1f} / {loadavg[2]:.1f} (shared with other work: "
              "compare live against save within a row pair only)."]
    write_section(Path(args.out), "xl driver: live memory snapshot against xl save -p", lines)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", type=int, nargs="+", default=[128, 512], help="guest MiB")
    ap.add_argument("--workload", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dsl", dir="/tmp"))  # short: unix socket paths
    (root / "run").mkdir()
    os.environ.update(standin_env(root / "xen", root / "run", suspend_timeout=60))
    try:
        res = run(root, args.runs, args.memory, args.workload)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    print(res, flush=True)  # the raw figures, whatever the report does
    report(res, args, os.getloadavg())


if __name__ == "__main__":
    main()
