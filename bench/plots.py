"""Growth (issue 11 item 7): how each figure grows with its size, as PNG plots under
``docs/plots/`` and the "Growth" section of docs/benchmarks.md.

``python -m bench.plots [--no-write]``. Sources: ``docs/bench-data/*.json`` (saved by
the full runs of bench/fleet.py, bench/disks.py, bench/memory_dd.py and
bench/metadata.py, see :mod:`bench.data`) and, where no data file exists yet, the
metadata table already in docs/benchmarks.md. Plots need matplotlib (the optional
``bench`` extra: ``pip install -e '.[bench]'``); without it the section is written with
the figures and the verdicts only, and says so.

Verdict per series: the exponent k of y ~ x^k between neighbouring sizes (log-log
slope): "flat" for |k| < 0.2 overall, "linear" when every step's k is within
0.8..1.25, else where it bends (the largest change of k between two steps).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench import data
from bench.report import write_section

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
PLOTS = REPO / "docs" / "plots"
HEADING = "Growth"

Series = dict[str, list[tuple[float, float]]]


def verdict(points: list[tuple[float, float]]) -> str:
    """How ``y`` grows with ``x``, from the log-log slope (the exponent k of y ~ x^k)
    of each step between neighbouring sizes: flat (k < 0.2 overall), linear (every
    step's k within 0.8..1.25), a steady power, or where it bends."""
    import math

    pts = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    if len(pts) < 2:
        return "too few sizes to tell"
    (x0, y0), (xn, yn) = pts[0], pts[-1]
    k = math.log(yn / y0) / math.log(xn / x0)
    steps = [math.log(y2 / y1) / math.log(x2 / x1)
             for (x1, y1), (x2, y2) in zip(pts, pts[1:], strict=False)]
    if abs(k) < 0.2:
        return f"flat (y ~ x^{k:.2f} overall: {y0:.3g} → {yn:.3g})"
    if all(0.8 <= s <= 1.25 for s in steps):
        return f"linear (y ~ x^{k:.2f})"
    if len(steps) < 2 or max(steps) - min(steps) < 0.3:
        return f"y ~ x^{k:.2f} throughout"
    i = max(range(len(steps) - 1), key=lambda j: abs(steps[j + 1] - steps[j]))
    return (f"bends at {pts[i + 1][0]:g}: y ~ x^{steps[i]:.2f} before, "
            f"x^{steps[i + 1]:.2f} after (x^{k:.2f} overall)")


def metadata_from_doc() -> Series:
    """The metadata table of docs/benchmarks.md (its rows, by N)."""
    text = DOC.read_text() if DOC.exists() else ""
    m = re.search(r"\| case \|(.*)\|\n\| --- \|.*\n((?:\|.*\|\n)+)", text)
    if not m:
        return {}
    sizes = [float(s.replace("N =", "").replace(",", "").strip())
             for s in m.group(1).split("|") if s.strip()]
    out: Series = {}
    for row in m.group(2).strip().split("\n"):
        cells = [c.strip() for c in row.strip("|").split("|")]
        out[cells[0]] = list(zip(sizes, (float(c) for c in cells[1:]), strict=True))
    return out


def from_data(name: str, keys: dict[str, str]) -> Series:
    """Series ``label -> [(size, value)]`` from docs/bench-data/NAME.json."""
    raw = data.load(name)
    return {label: [(float(size), float(fig[key])) for size, fig in raw.items() if key in fig]
            for label, key in keys.items()}


def sources() -> list[tuple[str, str, str, str, Series, bool]]:
    """(file stem, title, x label, y label, series, log axes) of every plot."""
    meta = from_data("metadata", {"new: one page": "new: one page",
                                  "new: all summaries": "new: all summaries",
                                  "old: all full records": "old: all full records"})
    if not any(meta.values()):
        doc = metadata_from_doc()
        meta = {k: v for k, v in doc.items() if k in (
            "new: one page", "new: all summaries", "old: all full records",
            "new: one snapshot (summary)")}
    return [
        ("metadata", "snapshot-list of one domain", "snapshots of the domain", "ms", meta, True),
        ("fleet", "fleet throughput", "hosts", "jobs/s",
         from_data("fleet", {"domsnap": "domsnap_rate", "bare Celery ceiling": "ceiling_rate"}),
         False),
        ("fleet-latency", "fleet p50 submit→done", "hosts", "ms",
         from_data("fleet", {"domsnap p50": "domsnap_p50", "ceiling p50": "ceiling_p50"}),
         False),
        ("disks", "pause by number of disks", "disks", "ms",
         from_data("disks", {"disk-only pause": "disk-only pause",
                             "memory + disks pause": "memory + disks pause"}), False),
        ("memory", "memory save by guest size", "guest MiB", "ms",
         from_data("memory", {"save": "save", "fsync": "fsync", "dd conv=fsync": "dd_fsync",
                              "pause": "pause"}), False),
    ]


def draw(stem: str, title: str, xlabel: str, ylabel: str, series: Series, log: bool) -> bool:
    """Write docs/plots/STEM.png; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, pts in series.items():
        if pts:
            xs, ys = zip(*sorted(pts), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / f"{stem}.png", metadata={"Software": None})
    plt.close(fig)
    return True


def section(*, draw_plots: bool = True) -> list[str]:
    lines = ["How each figure grows with its size: the plots are drawn from the full runs' "
             "figures (`docs/bench-data/`, and the metadata table above) by "
             "`python -m bench.plots`. Verdict per series, from the exponent k of "
             "y ~ x^k between neighbouring sizes (the log-log slope): *flat* for |k| < 0.2 "
             "overall, *linear* when every step's k is within 0.8..1.25, otherwise where it "
             "*bends* (the largest change of k between two steps).", ""]
    drawn_any = False
    for stem, title, xlabel, ylabel, series, log in sources():
        if not any(series.values()):
            lines += [f"### {title}", "", "No figures yet (run its full benchmark).", ""]
            continue
        drawn = draw_plots and draw(stem, title, xlabel, ylabel, series, log)
        drawn_any |= drawn
        lines += [f"### {title}", ""]
        if drawn:
            lines += [f"![{title}](plots/{stem}.png)", ""]
        lines += [f"| series | {xlabel}: {ylabel} | growth |", "| --- | --- | --- |"]
        for label, pts in series.items():
            if pts:
                shown = ", ".join(f"{x:g}: {y:.3g}" for x, y in sorted(pts))
                lines.append(f"| {label} | {shown} | {verdict(pts)} |")
        lines.append("")
    if draw_plots and not drawn_any:
        lines += ["(matplotlib is not installed here, so no PNG was drawn: "
                  "`pip install -e '.[bench]'` and run `python -m bench.plots`.)"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = ap.parse_args(argv)
    body = section(draw_plots=not args.no_write)
    print("\n".join(body))
    if not args.no_write:
        write_section(DOC, HEADING, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
