"""Confinement of paths that come from requests to the configured snapshot roots."""

from __future__ import annotations

import os
from pathlib import Path

from domsnap.errors import InvalidInput


def confined(path: str, roots: list[Path], *, field: str, must_not_exist: bool = True) -> Path:
    """``path`` as an absolute path under one of ``roots``; symlinks resolved, no escape."""
    if not os.path.isabs(path):
        raise InvalidInput(f"{field}: {path!r} is not an absolute path", field=field)
    if "\x00" in path or "," in path:
        raise InvalidInput(f"{field}: {path!r} contains a forbidden character", field=field)
    real = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            if must_not_exist and os.path.lexists(path):
                raise InvalidInput(f"{field}: {path} exists already; domsnap never overwrites",
                                   field=field)
            return real
    raise InvalidInput(
        f"{field}: {path} is outside the snapshot roots ({', '.join(str(r) for r in roots)})",
        field=field)
