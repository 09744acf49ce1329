"""Free space, checked before anything is written.

A memory image or an overlay that hits ENOSPC half-way fails its operation late,
with the guest paused meanwhile; the check at planning refuses it up front, with
nothing touched. Needs are summed per filesystem: a memory image and an overlay on
the same disk compete for the same free bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from domsnap.errors import InsufficientSpace

MiB = 1 << 20


@dataclass(frozen=True)
class Need:
    """``size`` bytes will be written at ``path`` (which need not exist yet)."""

    path: Path
    size: int
    what: str


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a new file's bytes go."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: Path) -> tuple[int, int]:
    """(filesystem id, bytes an unprivileged writer may still use) where ``path`` goes."""
    where = _existing(path)
    st = os.statvfs(where)
    return os.stat(where).st_dev, st.f_bavail * st.f_frsize


def require(needs: list[Need], *, reserve: int) -> None:
    """Raise :class:`InsufficientSpace` unless each filesystem holds what is written to it
    plus ``reserve`` bytes left over afterwards (for overlays that grow, logs, sidecars)."""
    by_fs: dict[int, list[Need]] = {}
    free: dict[int, int] = {}
    for n in needs:
        dev, avail = free_bytes(n.path)
        by_fs.setdefault(dev, []).append(n)
        free[dev] = avail
    for dev, items in by_fs.items():
        total = sum(n.size for n in items) + reserve
        if total > free[dev]:
            parts = ", ".join(f"{n.what} {n.path} ({n.size // MiB} MiB)" for n in items)
            raise InsufficientSpace(
                f"not enough free space for {parts}: {total // MiB} MiB needed with the "
                f"{reserve // MiB} MiB reserve, {free[dev] // MiB} MiB free",
                path=str(items[0].path), needed=total, free=free[dev])
