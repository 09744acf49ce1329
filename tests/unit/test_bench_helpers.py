"""The benchmarks' report helpers: a section keeps its earlier runs' figures, the growth
verdicts say what the figures do, and the growth data merge by size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import data, plots
from bench.harness import percentile
from bench.history import EARLIER, SUMMARY, write_with_history


def test_each_run_keeps_the_earlier_runs_newest_first(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    for i in range(3):
        write_with_history(doc, "Fleet", [f"table of run {i}"], f"run {i}: {i}.0 jobs/s")
    text = doc.read_text()
    assert "table of run 2" in text and "table of run 1" not in text
    assert f"{SUMMARY}run 2: 2.0 jobs/s" in text
    earlier = text[text.index(EARLIER):].splitlines()
    assert [line for line in earlier if line.startswith("- ")] == [
        "- run 1: 1.0 jobs/s", "- run 0: 0.0 jobs/s"]
    assert "## Other\n\nkept" in text  # other sections untouched


@pytest.mark.parametrize(("points", "word"), [
    ([(10, 1.0), (100, 10.0), (1000, 100.0), (10000, 1000.0)], "linear"),
    ([(10, 1.8), (1000, 2.7), (10000, 1.8), (100000, 3.1)], "flat"),
    ([(1, 10.0), (2, 20.0), (4, 40.0), (8, 400.0)], "bends at 4"),
])
def test_growth_verdicts(points: list[tuple[float, float]], word: str) -> None:
    assert plots.verdict(points).startswith(word), plots.verdict(points)


def test_growth_data_merge_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "DIR", tmp_path)
    data.save("fleet", 10, {"domsnap_rate": 13.5})
    data.save("fleet", 2, {"domsnap_rate": 20.0})
    data.save("fleet", 10, {"domsnap_rate": 14.0})  # the same size: replaced
    raw = json.loads((tmp_path / "fleet.json").read_text())
    assert list(raw) == ["2", "10"] and raw["10"] == {"domsnap_rate": 14.0}
    series = plots.from_data("fleet", {"domsnap": "domsnap_rate"})
    assert series == {"domsnap": [(2.0, 20.0), (10.0, 14.0)]}


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0
