"""Writes one benchmark's section of docs/benchmarks.md, keeping the others."""

from __future__ import annotations

from pathlib import Path

TITLE = "# Benchmarks"


def write_section(path: Path, heading: str, body: list[str]) -> None:
    """Replace the ``## heading`` section of ``path`` with ``body`` (or append it)."""
    text = path.read_text() if path.exists() else TITLE + "\n"
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line == f"## {heading}"), None)
    section = [f"## {heading}", "", *body]
    if start is None:
        lines += ["", *section]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        tail = lines[end:]
        lines = lines[:start] + section + ([""] + tail if tail else [])
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
