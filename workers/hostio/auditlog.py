"""The host's own audit log: an append-only JSONL file under the state dir (0600).

One line per mutating operation (:class:`schemas.models.AuditEntry`). Each line is
one ``write`` on a file opened ``O_APPEND``, so concurrent writers (the pools, the
CLI) never interleave within a line. Nothing here rewrites or truncates the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from schemas.models import AuditEntry

FILE_NAME = "audit.jsonl"


def audit_path(state_dir: Path) -> Path:
    return state_dir / FILE_NAME


def append(state_dir: Path, entry: AuditEntry) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = (entry.model_dump_json() + "\n").encode()
    fd = os.open(audit_path(state_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, line)
    finally:
        os.close(fd)


def read(state_dir: Path, limit: int | None = None) -> list[AuditEntry]:
    """The newest ``limit`` entries (all if None), oldest first; a line that does not
    parse (a torn write after a crash) is skipped."""
    try:
        lines = audit_path(state_dir).read_text().splitlines()
    except FileNotFoundError:
        return []
    out: list[AuditEntry] = []
    for line in lines:
        try:
            out.append(AuditEntry.model_validate_json(line))
        except ValueError:
            continue
    return out[-limit:] if limit else out
