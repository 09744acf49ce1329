"""Free-space checks at planning: needs summed per filesystem, the reserve kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from domsnap.errors import InsufficientSpace, Refused
from workers.engine import capacity
from workers.hostio.space import MiB, Need, free_bytes, require


def test_free_bytes_of_a_path_that_does_not_exist_yet(tmp_path: Path) -> None:
    dev, free = free_bytes(tmp_path / "a" / "b" / "new.save")
    assert dev == (tmp_path.stat().st_dev) and free > 0


def test_what_fits_passes_and_what_does_not_is_refused(tmp_path: Path) -> None:
    _, free = free_bytes(tmp_path)
    require([Need(tmp_path / "x", 1, "memory image")], reserve=0)
    with pytest.raises(InsufficientSpace, match=r"memory image .*/x .*MiB free") as err:
        require([Need(tmp_path / "x", free + MiB, "memory image")], reserve=0)
    assert isinstance(err.value, Refused) and err.value.details["free"] <= free + MiB


def test_needs_on_one_filesystem_add_up(tmp_path: Path) -> None:
    _, free = free_bytes(tmp_path)
    half = free // 2 + MiB
    require([Need(tmp_path / "a", half, "a")], reserve=0)
    with pytest.raises(InsufficientSpace, match="a .* b "):
        require([Need(tmp_path / "a", half, "a"), Need(tmp_path / "b", half, "b")], reserve=0)


def test_the_reserve_counts(tmp_path: Path) -> None:
    _, free = free_bytes(tmp_path)
    with pytest.raises(InsufficientSpace, match="reserve"):
        require([Need(tmp_path / "a", 1, "overlay")], reserve=free + MiB)


def test_create_plan_counts_memory_and_external_overlays_only(tmp_path: Path) -> None:
    _, free = free_bytes(tmp_path)
    plan = {"memory_file": None, "disks": [
        {"vdev": "vda", "type": "internal", "target": None},
        {"vdev": "vdb", "type": "external", "strategy": "lvm", "target": "/dev/vg/snap"},
    ]}
    capacity.check_create(free // MiB + 1, 128, plan)  # nothing written: no check
    plan["memory_file"] = str(tmp_path / "m.save")
    with pytest.raises(InsufficientSpace, match="memory image"):
        capacity.check_create(0, free // MiB + 1, plan)
    plan = {"memory_file": None,
            "disks": [{"vdev": "vdb", "type": "external", "target": str(tmp_path / "o")}]}
    with pytest.raises(InsufficientSpace, match="overlay of vdb"):
        capacity.check_create(free // MiB + 1, 128, plan)
