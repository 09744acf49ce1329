"""Host side of the lab's ``bench-live`` suite: read ``<run>/out/bench/results.json``
(written in dom0 by ``lab/xen/dom0/bench_live.py``) and write the section
"xl: live memory snapshot against `xl save -p` (nested Xen 4.17, TCG)" of
``docs/benchmarks.md`` (``bench.report.write_section``).

Usage: python3 lab/xen/bench_report.py RUN_DIR [--load "host load text"] [--doc PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402

HEADING = "xl: live memory snapshot against `xl save -p` (nested Xen 4.17, TCG)"


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def rows(runs: list[dict[str, Any]]) -> list[str]:
    out = ["| size | load | method | pause min / median / max (s) | live/save (median of "
           "per-run ratios) | stream bytes (median) | total time (median, s) | "
           "PAGE_DATA records / pages sent (median) | ticker noise (s) |",
           "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["size_mib"], r["load"]) for r in runs},
                  key=lambda k: (k[0], k[1] != "idle"))
    for size, load in keys:
        group = [r for r in runs if (r["size_mib"], r["load"]) == (size, load)]
        by_run: dict[int, dict[str, float]] = {}
        for r in group:
            if r.get("pause_s") is not None:
                by_run.setdefault(r["run"], {})[r["method"]] = r["pause_s"]
        ratios = [v["live"] / v["save"] for v in by_run.values()
                  if "live" in v and "save" in v and v["save"] > 0]
        for method in ("live", "save"):
            rs = [r for r in group if r["method"] == method]
            pauses = sorted(r["pause_s"] for r in rs if r.get("pause_s") is not None)
            if not pauses:
                continue
            sizes = [r["bytes"] for r in rs if r.get("bytes")]
            totals = [r["total_s"] for r in rs]
            noise = [r["baseline_gap_s"] for r in rs if r.get("baseline_gap_s") is not None]
            rec = "–"
            if method == "live":
                recs = [r.get("page_data_records") for r in rs if r.get("page_data_records")]
                pgs = [r.get("pages_sent") for r in rs if r.get("pages_sent")]
                if recs and pgs:
                    rec = f"{statistics.median(recs):.0f} / {statistics.median(pgs):.0f}"
            ratio = _f(statistics.median(ratios)) if method == "live" and ratios else ""
            name = ("live (`xl -vvv migrate -s` receiver)" if method == "live"
                    else "`xl save -p` + `xl unpause`")
            out.append(
                f"| {size} MiB | {load} | {name} | {_f(pauses[0])} / "
                f"{_f(statistics.median(pauses))} / {_f(pauses[-1])} (n={len(pauses)}) | "
                f"{ratio} | {int(statistics.median(sizes)) if sizes else '–'} | "
                f"{_f(statistics.median(totals), 1)} | {rec} | "
                f"{_f(max(noise)) if noise else '–'} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--load", default="", help="the host's load (uptime) during the run")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args()
    res = args.run / "out" / "bench" / "results.json"
    if res.exists():
        doc = json.loads(res.read_text())
        meta, runs = doc["meta"], doc["runs"]
    else:  # the boot ended before out/ was written: the runs from the console lines
        runs = [json.loads(line.split("LAB-BENCH-JSON ", 1)[1])
                for line in (args.run / "console.log").read_text(errors="replace").splitlines()
                if "LAB-BENCH-JSON " in line]
        meta = {"dirty_mib": {"128": 32, "512": 64}, "xen_version": "4.17.5",
                "dom0_cpu": "qemu64, TCG", "partial": True}
    failed = [r for r in runs if r["method"] == "live" and not r.get("resumed")]
    body = [
        "Issue 8's method measured in the lab (`LAB_SUITE=bench-live make lab`, "
        "`lab/xen/dom0/bench_live.py`): the **guest-visible pause** of a live memory capture "
        "(`xl -vvv migrate -s \"<receiver>\" DOMID lab`: the receiver takes the stream to "
        "the libxl END, fsyncs it and closes the channel without \"ready\", so xl resumes the "
        "guest) against `xl save -p` followed at once by `xl unpause`, on the same PV domU, "
        "methods interleaved (the first method alternates between runs). The pause is the "
        "largest gap between consecutive lines of the guest's 0.1 s console ticker inside "
        "the operation's window, timestamped in dom0 as a follower reads the console log "
        "every 10 ms (xenconsoled's `--timestamp=guest` prints whole seconds only), so the "
        "figures have ~0.1 s resolution; \"ticker noise\" is the largest gap in the 5 s "
        "before an operation. The guest's disk is not written (`domsnap.disk=0`); "
        "\"dirty\" rewrites a tmpfs file in a loop (`domsnap.dirty=<MiB>`: "
        + ", ".join(f"{k} MiB domU: {v} MiB" for k, v in sorted(
            (int(a), b) for a, b in meta["dirty_mib"].items())) + "). "
        "Stream bytes: the captured live stream, or the save file. Total time: xl's own "
        "(migrate: banner to exit; save: save + unpause).",
        "",
        "**This is nested emulation**: Xen "
        f"{meta.get('xen_version')} (Debian bookworm's 4.17.5+72, built with PV shadow "
        "paging, so log-dirty works) under `qemu-system-x86_64 -accel tcg` (no KVM, no "
        f"HAP), dom0 1536 MiB, 2 emulated CPUs ({meta.get('dom0_cpu')}); host: 2 cores "
        f"shared with other work, load {args.load or '?'}. Absolute times are many times "
        "a real host's; the ratio within a run is the figure to read.",
        "",
        *rows(runs),
        "",
    ]
    if failed:
        body.append(f"{len(failed)} live run(s) did not end in \"Migration failed, resuming "
                    "at sender.\" (see results.json).")
        body.append("")
    if meta.get("partial"):
        body.append("**Partial**: out/ was not read back (the boot had not ended): these are "
                    "the runs finished by then, read from the console's `LAB-BENCH-JSON` "
                    "lines. A ticker noise near the pause means the figure is at the "
                    "resolution limit of this method.")
        body.append("")
    body.append(f"Raw runs: {len(runs)} (every run's figures, the receiver's record "
                "timestamps and xl's stderr are in the run's `out/bench/`).")
    write_section(args.doc, HEADING, body)
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
