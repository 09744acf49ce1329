"""Memory save throughput against ``dd`` (issue 11 item 4), and the cost of the fsync.

``python -m bench.memory_dd [--quick] [--runs N] [--memory MiB ...] [--no-write]``: one
worker host (qemu driver) with one real guest per memory size (busybox, two qcow2
disks, like bench/memory_save.py). Each round, for each guest: a memory + disks
snapshot (the job's memory save time, from ``migrate`` to the save completed, and the
fsync of the image after it, from the ``resumed`` event), then ``dd`` writing the same
number of bytes to the same directory twice: ``conv=fsync`` (the physical limit of
write + sync) and without (the page cache alone). Throughput = bytes / (save + fsync)
against bytes / dd time; target ≥ 90% of dd. The guests and dd interleave; medians.
The results replace the "Memory save against dd" section of docs/benchmarks.md,
keeping earlier runs' figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

from bench.harness import NOISE, load_now, machine
from bench.history import write_with_history

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "Memory save against dd (qemu driver)"
MB = 1_000_000


def dd(path: Path, nbytes: int, *, fsync: bool) -> float:
    """Milliseconds for dd to write ``nbytes`` (1 MiB blocks, the tail in bytes) to
    ``path`` from /dev/zero, with ``conv=fsync`` or without; the file is removed."""
    blocks, tail = divmod(nbytes, 1 << 20)
    argv = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={blocks}", "status=none"]
    if fsync:
        argv.append("conv=fsync")
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, timeout=600)
    if tail:
        with open(path, "ab") as fh:
            fh.write(b"\0" * tail)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    took = (time.perf_counter() - t0) * 1000
    path.unlink()
    return took


def run(sizes: list[int], runs: int) -> tuple[dict[int, dict[str, list[float]]], list[str]]:
    from tests.integration.cluster import Cluster, succeeded

    out: dict[int, dict[str, list[float]]] = {
        m: {"bytes": [], "save": [], "fsync": [], "dd_fsync": [], "dd_nosync": [],
            "pause": []} for m in sizes}
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dsmemdd-") as tmp:
        cluster = Cluster(Path(tmp), suffix=uuidlib.uuid4().hex[:6])
        try:
            h = cluster.start_worker(f"memdd-{cluster.suffix}")
            doms = {m: cluster.create_domain(h.name, f"mem{m}-{cluster.suffix}", guest=True,
                                             memory=m) for m in sizes}
            for dom in doms.values():
                cluster.wait_inventory(dom)
            client = cluster.client()
            for i in range(runs):
                loads.append(load_now())
                for m, dom in doms.items():
                    job = succeeded(client, client.create(dom.name, name=f"m{i}"), timeout=600)
                    ev = next(e for e in client.store.events(job.job_id) if e.step == "resumed")
                    res = job.result or {}
                    nbytes = int(res["memory_bytes"])
                    cell = out[m]
                    cell["bytes"].append(nbytes)
                    cell["save"].append(float(res["memory_save_ms"]))
                    cell["fsync"].append(float(ev.data.get("fsync_ms") or 0))
                    cell["pause"].append(float(res.get("pause_ms") or 0))
                    # the same filesystem: next to the memory image, in its directory
                    target = h.snapshots / dom.uuid / f"dd-{i}.bin"
                    cell["dd_fsync"].append(dd(target, nbytes, fsync=True))
                    cell["dd_nosync"].append(dd(target, nbytes, fsync=False))
                    succeeded(client, client.delete(dom.name, f"m{i}"), timeout=600)
        finally:
            for name in list(cluster.hosts):
                cluster.stop_worker(name)
            cluster.destroy_all()
            cluster.cleanup_redis()
    return out, loads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one 128 MiB guest, 1 round")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--memory", type=int, nargs="+", default=None,
                    help="guest sizes in MiB (default 256 512 1024)")
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = ap.parse_args(argv)
    sizes = args.memory or ([128] if args.quick else [256, 512, 1024])
    runs = args.runs or (1 if args.quick else 5)
    where = machine()
    res, loads = run(sizes, runs)
    body, summary = report(res, sizes, runs, args.quick, where, loads)
    print("\n".join(body))
    if not args.no_write:
        from bench import data

        for m, cell in medians(res).items():
            data.save("memory", m, cell)
        write_with_history(DOC, HEADING, body, summary)
    return 0


def medians(res: dict[int, dict[str, list[float]]]) -> dict[int, dict[str, float]]:
    return {m: {k: statistics.median(v) for k, v in cell.items()} for m, cell in res.items()}


def report(res: dict[int, dict[str, list[float]]], sizes: list[int], runs: int, quick: bool,
           where: str, loads: list[str]) -> tuple[list[str], str]:
    med = medians(res)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.memory_dd"
        f"{' --quick' if quick else ''} --runs {runs} --memory {' '.join(map(str, sizes))}` "
        f"on {where}; load at the start of each round: {', '.join(loads)}. " + NOISE, "",
        "One worker host (qemu driver), one real guest per size (busybox, idle but for a "
        "counter, two qcow2 disks); a memory + disks snapshot, then `dd if=/dev/zero bs=1M` "
        "of the same number of bytes into the same directory, with `conv=fsync` and "
        f"without, interleaved; medians of {runs} (ms). The memory image holds what QEMU "
        "writes of the guest's RAM (zero pages take a few bytes each, so it is smaller "
        "than the guest). domsnap's throughput counts the save and its fsync.", "",
        "| guest (MiB) | image (MB) | save (ms) | fsync (ms) | save + fsync (MB/s) | dd "
        "conv=fsync (ms) | dd (MB/s) | domsnap / dd | dd without fsync (ms) | pause (ms) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ratios = []
    for m in sizes:
        c = med[m]
        mine = c["bytes"] / MB / ((c["save"] + c["fsync"]) / 1000)
        theirs = c["bytes"] / MB / (c["dd_fsync"] / 1000)
        ratios.append(mine / theirs)
        lines.append(f"| {m} | {c['bytes'] / MB:.1f} | {c['save']:.0f} | {c['fsync']:.0f} | "
                     f"{mine:.0f} | {c['dd_fsync']:.0f} | {theirs:.0f} | {mine / theirs:.2f} | "
                     f"{c['dd_nosync']:.0f} | {c['pause']:.1f} |")
    lines += ["", "Target (issue 11): memory save ≥ 90% of dd (`domsnap / dd` ≥ 0.90)."]
    summary = (f"{time.strftime('%Y-%m-%d')}: domsnap / dd "
               + ", ".join(f"{m} MiB {r:.2f}" for m, r in zip(sizes, ratios, strict=True))
               + "; fsync " + ", ".join(f"{med[m]['fsync']:.0f} ms" for m in sizes))
    return lines, summary


if __name__ == "__main__":
    raise SystemExit(main())
