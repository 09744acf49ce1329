"""The host's copy of each domain's ``current`` snapshot pointer, next to its sidecars
(``<snapshot dir>/<uuid>/.current``), so Redis's pointer can be rebuilt from the host
like the records are. Written when an operation ends successfully and by fsck."""

from __future__ import annotations

import json
from pathlib import Path

from workers.hostio.fsutil import atomic_write

FILE_NAME = ".current"


def current_path(snapshot_dir: Path, uuid: str) -> Path:
    return snapshot_dir / uuid / FILE_NAME


def read_current(snapshot_dir: Path, uuid: str) -> str | None:
    try:
        value = json.loads(current_path(snapshot_dir, uuid).read_text()).get("current")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str) and value else None


def write_current(snapshot_dir: Path, uuid: str, name: str | None) -> None:
    atomic_write(current_path(snapshot_dir, uuid), json.dumps({"current": name}))
