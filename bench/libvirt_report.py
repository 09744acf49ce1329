"""Tables of bench/libvirt.py: per configuration min / median / max of each mode, the
ratios domsnap/libvirt against issue 11's targets, where domsnap's wall time goes, and
the medians of earlier full runs (``bench/results/libvirt.jsonl``) as history.

``python -m bench.libvirt_report`` writes the section again from that file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench.report import write_section

REPO = Path(__file__).resolve().parents[1]
HISTORY = REPO / "bench" / "results" / "libvirt.jsonl"
HEADING = "Pause and wall time against libvirt"
TITLES = {"lv-int": "libvirt internal (`snapshot-create-as`)",
          "lv-ext": "libvirt external (`--memspec --diskspec --live`)",
          "ds-int-cli": "domsnap internal, CLI", "ds-int-py": "domsnap internal, client",
          "ds-ext-cli": "domsnap external, CLI", "ds-ext-py": "domsnap external, client"}
# (what, domsnap mode, libvirt mode, metric, target ratio)
TARGETS = [
    *[(f"pause: {TITLES[m]} <= 0.25x libvirt internal", m, "lv-int", "gap", 0.25)
      for m in ("ds-int-cli", "ds-int-py", "ds-ext-cli", "ds-ext-py")],
    *[(f"pause: {TITLES[m]} <= 0.5x libvirt --live", m, "lv-ext", "gap", 0.5)
      for m in ("ds-int-cli", "ds-int-py", "ds-ext-cli", "ds-ext-py")],
    ("wall: CLI internal <= 1.0x libvirt internal", "ds-int-cli", "lv-int", "wall", 1.0),
    ("wall: CLI external <= 1.0x libvirt --live", "ds-ext-cli", "lv-ext", "wall", 1.0),
    ("wall: client internal <= 0.7x libvirt internal", "ds-int-py", "lv-int", "wall", 0.7),
    ("wall: client external <= 0.7x libvirt --live", "ds-ext-py", "lv-ext", "wall", 0.7),
]


def git_rev() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def history() -> list[dict[str, Any]]:
    """Earlier full runs, oldest first."""
    if not HISTORY.exists():
        return []
    return [json.loads(line) for line in HISTORY.read_text().splitlines() if line.strip()]


def _mmm(v: list[float]) -> str:
    return " / ".join(f"{x:.0f}" for x in v)


def ratio(modes: dict[str, Any], ds: str, lv: str, metric: str) -> list[float] | None:
    """domsnap/libvirt per percentile (min, median, max), or None if either is missing."""
    if ds not in modes or lv not in modes:
        return None
    return [modes[ds][metric][i] / modes[lv][metric][i] for i in range(3)]


def render(run: dict[str, Any], past: list[dict[str, Any]]) -> list[str]:
    res = run["results"]
    cmd = "python -m bench.libvirt" + (" --quick" if run["quick"] else f" --runs {run['runs']}")
    lines = [
        f"Measured {run['started']} (commit {run['commit']}) with `{cmd}` on {run['machine']}; "
        "TCG (no usable KVM here), QEMU 7.2, libvirt 9.0. This machine is shared with other "
        "test runs and a nested Xen lab, so the figures are noisy: read the medians and the "
        "ratios, which come from the same run with the tools interleaved round by round. "
        f"Both tools' processes and guests ran at nice {run.get('nice', 0)}.",
        "",
        "Both tools snapshot the same guest (the test kernel and initramfs, one vCPU, q35, "
        "two 64 MiB virtio-blk qcow2 disks, serial console to a file; only the guest being "
        "snapshotted runs): memory + both disks, live. *gap*: the guest-visible pause, the "
        "largest gap between arrivals of the guest ticker's lines (every 10 ms) on the host "
        "around the stop (overlapping QEMU's STOP -> RESUME), so it includes up to one "
        "ticker period (*period*: the median gap before the command); *longest*: the "
        "largest gap over the whole command; *dark before / after* (medians): how much "
        "of the gap lay before STOP and after RESUME. *STOP-RESUME*: QEMU's event timestamps "
        "(libvirt's through "
        "`virsh qemu-monitor-event --loop --timestamp`, domsnap's as its job recorded them). "
        "*wall*: the command (virsh; `python -m domsnap snapshot-create`, a new process; "
        "`Client.create` + `Client.wait` in a running program). Figures in ms, "
        "min / median / max.",
    ]
    for r in res.values():
        load = " / ".join(f"{x:.1f}" for x in r["load"])
        what = ("dirtying 100 MiB in a loop" if r["workload"] == "dirty"
                else "idle but for the ticker")
        lines += ["", f"**{r['memory']} MiB, {r['workload']}** ({what}; "
                  f"load {load} at the end; {r['seconds']:.0f} s)", "",
                  "| mode | runs | gap (ms) | STOP-RESUME (ms) | wall (ms) | longest (ms) "
                  "| period (ms) | dark before / after |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for mode, m in r["modes"].items():
            dark = " / ".join(f"{x:.0f}" for x in m["dark"]) if "dark" in m else "-"
            lines.append(f"| {TITLES[mode]} | {m['n']} | {_mmm(m['gap'])} | {_mmm(m['pause'])} "
                         f"| {_mmm(m['wall'])} | {_mmm(m.get('longest', [0, 0, 0]))} "
                         f"| {m['period']:.0f} | {dark} |")
    if not run["quick"]:
        lines += ["", "Ratios domsnap/libvirt per percentile (min / median / max of the "
                  "one over the same of the other); *ok* when every percentile meets the "
                  "target:", "",
                  "| target | " + " | ".join(res) + " |",
                  "| --- |" + " --- |" * len(res)]
        for what, ds, lv, metric, limit in TARGETS:
            cells = []
            for r in res.values():
                row = ratio(r["modes"], ds, lv, metric)
                cells.append("n/a" if row is None else
                             " / ".join(f"{x:.2f}" for x in row)
                             + (" ok" if max(row) <= limit else " **no**"))
            lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines += ["", "Where domsnap's wall time goes (medians, ms; `queue+admission`: submitted "
              "-> the worker started the job, `run`: started -> finished, `notice`: "
              "finished -> the caller returned; `memory save`: the live copy of the memory "
              "as the record has it, without the fsync that follows; `steps at`: when each "
              "progress step began, from submission):", ""]
    for tag, r in res.items():
        for mode, m in r["modes"].items():
            if m["hops"]:
                spans = ", ".join(f"{k} {m['hops'][k]:.0f}"
                                  for k in ("queue+admission", "run", "memory save",
                                            "notice")
                                  if k in m["hops"])
                steps = sorted((v, k) for k, v in m["hops"].items() if k.startswith("@"))
                hops = spans + "; steps at " + ", ".join(f"{k[1:]} {v:.0f}" for v, k in steps)
                lines.append(f"- {tag}, {TITLES[mode]}: {hops}")
    if past:
        lines += ["", "History (the other runs, oldest first; medians, ms):", ""]
        lines += [f"- {p['started']} (commit {p['commit']}, {p['runs']} runs): {p['note']}"
                  for p in past if p.get("note")]
        lines += ["", "| run | commit | config | mode | gap | longest | STOP-RESUME | wall "
                  "| dark before / after |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in past:
            for tag, r in p["results"].items():
                for mode, m in r["modes"].items():
                    cells = [f"{m[k][1]:.0f}" if k in m else "-"
                             for k in ("gap", "longest", "pause", "wall")]
                    dark = " / ".join(f"{x:.0f}" for x in m["dark"]) if "dark" in m else "-"
                    lines.append(f"| {p['started']} | {p['commit']} | {tag} | {TITLES[mode]} "
                                 f"| {' | '.join(cells)} | {dark} |")
    return lines


def save(run: dict[str, Any], lines: list[str], doc: Path) -> None:
    """Write the section, then remember the run for the next one's history."""
    write_section(doc, HEADING, lines)
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    with HISTORY.open("a") as fh:
        fh.write(json.dumps(run) + "\n")


def rewrite(doc: Path) -> None:
    """Render the section again from the history file: its last full run as the current
    one, every other run as history (after editing the tables' layout, or a note)."""
    runs = history()
    full = [i for i, r in enumerate(runs) if not r.get("partial")]
    if not full:
        raise SystemExit(f"{HISTORY} holds no full run")
    current = full[-1]  # a partial run (some configurations) stays in the history
    write_section(doc, HEADING,
                  render(runs[current], [r for i, r in enumerate(runs) if i != current]))


if __name__ == "__main__":
    rewrite(REPO / "docs" / "benchmarks.md")
