"""Parallel disks (issue 11 item 3): pause and wall time of a live snapshot of a guest
with 1, 2, 4 and 8 qcow2 disks, qemu driver, real guests.

``python -m bench.disks [--quick] [--runs N] [--memory MiB] [--no-write]``: one worker
host, one real guest (busybox, like bench/memory_save.py) per disk count; each round
snapshots every guest once disk-only and once with memory (all disks internal, in one
QMP transaction), the guests interleaved. Pause: STOP→RESUME from QMP events (the job's
``pause_ms``); wall: ``Client.create`` to ``Client.wait`` returning. Medians; the
results replace the "Parallel disks" section of docs/benchmarks.md, keeping earlier
runs' figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

from bench.harness import NOISE, load_now, machine
from bench.history import write_with_history

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "Parallel disks (qemu driver)"
MODES = ("disk-only", "memory + disks")


def run(counts: list[int], runs: int, memory: int
        ) -> tuple[dict[tuple[int, str], dict[str, list[float]]], list[str]]:
    from tests.integration.cluster import Cluster, succeeded

    out: dict[tuple[int, str], dict[str, list[float]]] = {
        (n, m): {"pause": [], "wall": [], "disks": []} for n in counts for m in MODES}
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dsdisks-") as tmp:
        cluster = Cluster(Path(tmp), suffix=uuidlib.uuid4().hex[:6])
        try:
            h = cluster.start_worker(f"disks-{cluster.suffix}")
            doms = {n: cluster.create_domain(h.name, f"disks{n}-{cluster.suffix}", guest=True,
                                             disks=n, memory=memory) for n in counts}
            for dom in doms.values():
                cluster.wait_inventory(dom)
            client = cluster.client()
            for i in range(runs):
                loads.append(load_now())
                for mode in MODES:
                    for n, dom in doms.items():
                        t0 = time.perf_counter()
                        job = succeeded(client, client.create(
                            dom.name, name=f"{mode[:4]}{i}", disk_only=mode == "disk-only"),
                            timeout=600)
                        wall = (time.perf_counter() - t0) * 1000
                        res = job.result or {}
                        cell = out[(n, mode)]
                        cell["wall"].append(wall)
                        cell["pause"].append(float(res.get("pause_ms") or 0))
                        cell["disks"].append(max(float(d.get("duration_ms") or 0)
                                                 for d in res.get("disks", [{}])))
        finally:
            for name in list(cluster.hosts):
                cluster.stop_worker(name)
            cluster.destroy_all()
            cluster.cleanup_redis()
    return out, loads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one guest of 2 disks, 1 round, 128 MiB")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--memory", type=int, default=None, help="guest MiB (default 256)")
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = ap.parse_args(argv)
    counts = [2] if args.quick else [1, 2, 4, 8]
    runs = args.runs or (1 if args.quick else 5)
    memory = args.memory or (128 if args.quick else 256)
    where = machine()
    res, loads = run(counts, runs, memory)
    body, summary = report(res, counts, runs, memory, args.quick, where, loads)
    print("\n".join(body))
    if not args.no_write:
        from bench import data

        for (n, mode), cell in medians(res).items():
            figs = data.load("disks").get(str(n), {})
            figs.update({f"{mode} {k}": v for k, v in cell.items()})
            data.save("disks", n, figs)
        write_with_history(DOC, HEADING, body, summary)
    return 0


def medians(res: dict[tuple[int, str], dict[str, list[float]]]
            ) -> dict[tuple[int, str], dict[str, float]]:
    return {k: {m: statistics.median(v) for m, v in cell.items()} for k, cell in res.items()}


def report(res: dict[tuple[int, str], dict[str, list[float]]], counts: list[int], runs: int,
           memory: int, quick: bool, where: str, loads: list[str]) -> tuple[list[str], str]:
    med = medians(res)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.disks"
        f"{' --quick' if quick else ''} --runs {runs} --memory {memory}` on {where}; load at "
        f"the start of each round: {', '.join(loads)}. " + NOISE, "",
        f"One worker host (qemu driver), one real guest ({memory} MiB, busybox) per disk "
        "count, every disk a qcow2 image; internal snapshots of all disks in one QMP "
        f"transaction, disk-only and with memory, the guests interleaved; medians of {runs} "
        "(ms). Pause: STOP→RESUME (QMP events); disk transaction: the time of the one "
        "transaction that took every disk; wall: `Client.create` to `Client.wait` returning.",
        "", "| disks | disk-only pause | disk-only transaction | disk-only wall | memory + disks "
        "pause | memory + disks wall | pause / pause at 1 disk (memory + disks) |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
    first = med[(counts[0], MODES[1])]["pause"] or 1.0
    for n in counts:
        a, b = med[(n, MODES[0])], med[(n, MODES[1])]
        lines.append(f"| {n} | {a['pause']:.1f} | {a['disks']:.1f} | {a['wall']:.0f} | "
                     f"{b['pause']:.1f} | {b['wall']:.0f} | {b['pause'] / first:.2f}x |")
    last = counts[-1]
    summary = (f"{time.strftime('%Y-%m-%d')}, {memory} MiB guests: memory + disks pause "
               + ", ".join(f"{n} disk(s) {med[(n, MODES[1])]['pause']:.1f} ms" for n in counts)
               + f"; disk-only pause {med[(counts[0], MODES[0])]['pause']:.1f} → "
               f"{med[(last, MODES[0])]['pause']:.1f} ms")
    return lines, summary


if __name__ == "__main__":
    raise SystemExit(main())
