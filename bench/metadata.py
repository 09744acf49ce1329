"""Snapshot metadata at scale (issue 11): listing one domain with 10 .. 100,000
snapshots through the Python client, one page, one snapshot, and Redis memory per
record, against the old path (every full record fetched and parsed) in the same run.

``python -m bench.metadata [--quick] [--runs N] [--no-write]``: records shaped like
real ones (a domain config with two disks, two disk snapshots, a memory file: about
1.1 KB of JSON each) are written for one domain under a throwaway key prefix of the
Redis at ``DOMSNAP_REDIS_URL`` (default the test Redis, db 11), measured, and deleted.
Each figure is the median of ``--runs`` runs, the old and new paths interleaved. The
results replace the "Snapshot metadata at scale" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import write_section
from domsnap import fastlist
from domsnap.client import Client
from domsnap.settings import Settings
from domsnap.store import Store
from schemas.config import DiskSpec, DomainConfig
from schemas.models import DiskSnapshot, DomainInfo, HostInventory, SnapshotRecord

DOM = "5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADING = "Snapshot metadata at scale"
PAGE = 20


def record(i: int) -> SnapshotRecord:
    """A record shaped like a real memory + two-disk snapshot of a PV domain (about
    1.1 KB of JSON, as the issue measured)."""
    img = "/srv/xen/web01"
    cfg = DomainConfig(
        name="bench-web-01", uuid=DOM, type="pv", memory=2048, vcpus=2,
        kernel="/boot/vmlinuz-6.1", ramdisk="/boot/initrd-6.1", extra="console=hvc0",
        disks=[DiskSpec(vdev="xvda", target=f"{img}/root.qcow2", format="qcow2"),
               DiskSpec(vdev="xvdb", target=f"{img}/data.qcow2", format="qcow2")])
    disks = [DiskSnapshot(vdev=d.vdev, type="internal", format="qcow2", file=str(d.target),
                          strategy="qmp", duration_ms=3.2, size_bytes=1_073_741_824)
             for d in cfg.disks]
    return SnapshotRecord(
        name=f"daily-{i:07d}", domain=DOM, domain_name=cfg.name, host="bench-host-01",
        driver="xl", description="nightly backup", created_at=1_700_000_000.0 + 60.0 * i,
        domain_state="running", disk_only=False,
        memory_file=f"/var/lib/xen/snapshots/{DOM[:8]}/daily-{i:07d}.save",
        memory_bytes=2_147_483_648, memory_save_ms=812.5, pause_ms=14.2,
        parent=f"daily-{i - 1:07d}" if i else None, disks=disks, domain_config=cfg,
        job_id="3f2504e0-4f89-41d3-9a0c-0305e82c3301", policy="nightly")


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(url: str, n: int, runs: int) -> dict[str, float]:
    prefix = f"dsbench-{secrets.token_hex(4)}"
    store = Store.from_url(url, prefix=prefix)
    try:
        store.publish_inventory(HostInventory(host="bench-host-01", driver="xl",
                                              published_at=time.time(),
                                              domains=[DomainInfo(uuid=DOM, name="bench-web-01",
                                                                  state="running")]), 600)
        for start in range(0, n, 1000):
            store.put_snapshots(DOM, [record(i) for i in range(start, min(n, start + 1000))])
        client = Client(Settings(redis_url=url, key_prefix=prefix), store=store)
        env = {"DOMSNAP_REDIS_URL": url, "DOMSNAP_KEY_PREFIX": prefix}
        mid = f"daily-{n // 2:07d}"
        cases: dict[str, Callable[[], Any]] = {
            "old: all full records": lambda: client.snapshots("bench-web-01"),
            "new: all summaries": lambda: client.snapshot_page("bench-web-01"),
            "new: all, fast path": lambda: fastlist.page("bench-web-01", environ=env),
            "old: one page (all parsed, sliced)":
                lambda: client.snapshots("bench-web-01")[n // 2:n // 2 + PAGE],
            "new: one page": lambda: client.snapshot_page("bench-web-01", offset=n // 2,
                                                          limit=PAGE),
            "new: one page, fast path": lambda: fastlist.page("bench-web-01", offset=n // 2,
                                                              limit=PAGE, environ=env),
            "old: one snapshot (full record)": lambda: client.snapshot("bench-web-01", mid),
            "new: one snapshot (summary)":
                lambda: client.snapshot_summary("bench-web-01", mid),
        }
        assert client.snapshot_page("bench-web-01").total == n
        out: dict[str, list[float]] = {k: [] for k in cases}
        slow = n >= 100_000
        for _ in range(runs):  # interleaved: each round measures every case once
            for name, fn in cases.items():
                out[name].append(median_ms(fn, 1 if slow and name.startswith("old") else 3))
        res = {k: statistics.median(v) for k, v in out.items()}
        k = store.keys
        for what, key in (("records", k.snapshots(DOM)), ("summaries", k.summaries(DOM)),
                          ("index", k.by_time(DOM))):
            res[f"bytes/record: {what}"] = int(store.r.memory_usage(key, samples=0)) / n
        res["json bytes/record"] = float(len(record(1).model_dump_json()))
        return res
    finally:
        for key in store.r.scan_iter(f"{prefix}:*", count=1000):
            store.r.delete(key)


def machine() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) at the start, "
            f"Python {platform.python_version()}")


def report(results: dict[int, dict[str, float]], runs: int, quick: bool, where: str) -> list[str]:
    sizes = sorted(results)
    rows = [k for k in next(iter(results.values())) if not k.startswith(("bytes", "json"))]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.metadata"
             f"{' --quick' if quick else ''} --runs {runs}` on {where}; Redis on the same "
             "machine (loopback TCP). One domain holds N snapshots of about "
             f"{results[sizes[0]]['json bytes/record']:.0f} bytes of record JSON each; "
             "times are medians (ms) through the Python client (`Client`, which resolves the "
             "domain from the inventory first) or the CLI's stdlib fast path "
             f"(`domsnap.fastlist`); a page is {PAGE} snapshots from the middle. Old and new "
             "paths are interleaved in the same run.", "",
             "| case | " + " | ".join(f"N = {n:,}" for n in sizes) + " |",
             "| --- |" + " --- |" * len(sizes)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{results[n][row]:.2f}" for n in sizes) + " |")
    lines += ["", "Redis memory per snapshot (`MEMORY USAGE` of each key / N, bytes):", "",
              "| key | " + " | ".join(f"N = {n:,}" for n in sizes) + " |",
              "| --- |" + " --- |" * len(sizes)]
    for what in ("records", "summaries", "index"):
        key = f"bytes/record: {what}"
        lines.append(f"| {what} | " + " | ".join(f"{results[n][key]:.0f}" for n in sizes) + " |")
    big = sizes[-1]
    r = results[big]
    page_x = r["old: one page (all parsed, sliced)"] / r["new: one page"]
    lines += ["", f"At N = {big:,}: listing every snapshot's summary is "
              f"**{r['old: all full records'] / r['new: all summaries']:.1f}x** faster than "
              f"fetching and parsing the full records through the client "
              f"({r['old: all full records'] / r['new: all, fast path']:.1f}x on the fast "
              f"path); one page is **{page_x:.0f}x** "
              f"faster, and its time stays flat from N = {sizes[0]:,} "
              f"({results[sizes[0]]['new: one page']:.2f} ms) to N = {big:,} "
              f"({r['new: one page']:.2f} ms)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10, 1,000, 10,000; 3 runs")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = ap.parse_args(argv)
    url = os.environ.get("DOMSNAP_REDIS_URL", "redis://127.0.0.1:6379/11")
    sizes = [10, 1_000, 10_000] if args.quick else [10, 1_000, 10_000, 100_000]
    runs = args.runs or (3 if args.quick else 7)
    where = machine()
    results = {}
    for n in sizes:
        results[n] = measure(url, n, runs)
        print(f"N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[n].items()), flush=True)
    body = report(results, runs, args.quick, where)
    print("\n".join(body))
    if not args.no_write:
        write_section(DOC, HEADING, body)
        from bench import data

        for n, res in results.items():
            data.save("metadata", n, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
