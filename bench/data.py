"""The figures behind the growth plots: each benchmark's full run saves its medians,
keyed by its size (hosts, disks, MiB of memory), to ``docs/bench-data/NAME.json``;
:mod:`bench.plots` draws from these files. Runs at other sizes add keys; a run at the
same size replaces its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DIR = Path(__file__).resolve().parents[1] / "docs" / "bench-data"


def load(name: str) -> dict[str, Any]:
    path = DIR / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data


def save(name: str, size: int | str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` at ``size`` into ``docs/bench-data/NAME.json``."""
    data = load(name)
    data[str(size)] = figures
    DIR.mkdir(parents=True, exist_ok=True)
    # sizes in numeric order (sort_keys would put "10" before "2"), figures by name
    ordered = {k: dict(sorted(v.items())) for k, v in
               sorted(data.items(), key=lambda kv: float(kv[0]))}
    (DIR / f"{name}.json").write_text(json.dumps(ordered, indent=1) + "\n")
