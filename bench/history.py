"""A benchmark section that keeps the figures of its earlier runs: each run writes a
one-line ``Summary:`` of its figures; when the section is written again, the old
summary moves to the top of the ``Earlier runs`` list under it (kept, never edited)."""

from __future__ import annotations

from pathlib import Path

from bench.report import write_section

SUMMARY = "Summary of this run: "
EARLIER = "Earlier runs (newest first):"


def _old_section(path: Path, heading: str) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    try:
        start = lines.index(f"## {heading}")
    except ValueError:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    return lines[start + 1:end]


def history(path: Path, heading: str) -> list[str]:
    """The earlier runs' summaries of a section, newest first (the last run's first)."""
    old = _old_section(path, heading)
    last = [line.removeprefix(SUMMARY) for line in old if line.startswith(SUMMARY)]
    earlier = [line.removeprefix("- ") for line in old if line.startswith("- ")
               and EARLIER in old and old.index(line) > old.index(EARLIER)]
    return last + earlier


def write_with_history(path: Path, heading: str, body: list[str], summary: str) -> None:
    """Write the section: ``body``, this run's summary, then every earlier one."""
    past = history(path, heading)
    out = [*body, "", SUMMARY + summary]
    if past:
        out += ["", EARLIER, "", *[f"- {line}" for line in past]]
    write_section(path, heading, out)
