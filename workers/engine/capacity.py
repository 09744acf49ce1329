"""What an operation will write, so planning can refuse it before anything is touched.

Estimates, on the safe side: a memory image is at most the guest's RAM plus a
quarter (QEMU's live stream re-sends pages the guest dirtied meanwhile; xl's is RAM
plus a few headers); a new overlay starts at well under a MiB and then grows with
the guest's writes, which the reserve leaves room for; a copied-out internal
snapshot holds at most what its image has allocated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workers.hostio.space import MiB, Need, require

MEMORY_FACTOR = 1.25
OVERLAY_BYTES = 1 * MiB


def check_create(reserve_mb: int, memory_mib: int, plan: dict[str, Any]) -> None:
    needs: list[Need] = []
    if plan["memory_file"]:
        needs.append(Need(Path(plan["memory_file"]), int(memory_mib * MiB * MEMORY_FACTOR),
                          "memory image"))
    for d in plan["disks"]:
        if d["type"] == "external" and d.get("strategy") != "lvm" and d.get("target"):
            needs.append(Need(Path(d["target"]), OVERLAY_BYTES, f"overlay of {d['vdev']}"))
    if needs:
        require(needs, reserve=reserve_mb * MiB)


def check_revert(reserve_mb: int, steps: list[dict[str, str]]) -> None:
    needs: list[Need] = []
    for s in steps:
        if s["op"] == "overlay":
            needs.append(Need(Path(s["path"]), OVERLAY_BYTES, f"overlay of {s['vdev']}"))
        elif s["op"] == "copyout":
            size = os.stat(s["source"]).st_blocks * 512
            needs.append(Need(Path(s["path"]), size, f"copy of {s['vdev']}'s snapshot"))
    if needs:
        require(needs, reserve=reserve_mb * MiB)
