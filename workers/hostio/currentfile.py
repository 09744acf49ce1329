"""The host's copy of each domain's ``current`` snapshot pointer
(``<state dir>/current/<uuid>.json``), so Redis's pointer can be rebuilt from the
host like the records are from the sidecars. Written when an operation ends
successfully and by fsck. (Not in the snapshot dir: that holds only snapshot files.)"""

from __future__ import annotations

import json
from pathlib import Path

from workers.hostio.fsutil import atomic_write


def current_path(state_dir: Path, uuid: str) -> Path:
    return state_dir / "current" / f"{uuid}.json"


def read_current(state_dir: Path, uuid: str) -> str | None:
    try:
        value = json.loads(current_path(state_dir, uuid).read_text()).get("current")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str) and value else None


def write_current(state_dir: Path, uuid: str, name: str | None) -> None:
    atomic_write(current_path(state_dir, uuid), json.dumps({"current": name}))
