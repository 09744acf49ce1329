"""Small file helpers every host-side writer shares: records and configs are
replaced atomically and reach the disk before they count; guest RAM is synced
because QEMU and xl do not sync what they write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: str, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` all or nothing (temp file, fsync, rename), in a
    0700 directory. The temp file's name is unique, so writers in several processes
    (a worker's heartbeat and its pools) never rename each other's file away."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
