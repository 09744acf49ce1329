"""One disk's snapshot, taken or taken back while no domain holds the image.

Shared by the engine's offline path (one task per disk of a shut-off domain) and
the xl driver's save/restore window. Only for images nobody has open: Xen's QEMU
does not lock its images, so ``qemu-img`` under a running domain is silently lost.
"""

from __future__ import annotations

from pathlib import Path

from domsnap.errors import Refused, SnapshotExists
from workers.block.lvm import Lvm
from workers.block.qemu_img import QemuImg
from workers.drivers.base import DiskOp


def take_offline(img: QemuImg, lvm: Lvm, op: DiskOp, name: str) -> None:
    if op.strategy == "lvm":
        lv = lvm.probe(op.path)
        if lv is None:
            raise Refused(f"disk {op.vdev}: {op.path} is no longer an LVM volume")
        lvm.create_snapshot(lv, name)
    elif op.type == "internal":
        if name in img.snapshot_list(op.path):
            raise SnapshotExists(f"{op.path} already holds an internal snapshot {name!r}")
        img.snapshot_create(op.path, name)
    else:
        assert op.target is not None
        img.create(op.target, fmt="qcow2", backing=op.path, backing_fmt=op.format)


def undo_offline(img: QemuImg, lvm: Lvm, op: DiskOp, name: str) -> None:
    """Take back what :func:`take_offline` made (nothing else is touched)."""
    if op.strategy == "lvm":
        if op.target:
            lvm.remove(op.target)
    elif op.type == "internal":
        if name in img.snapshot_list(op.path):
            img.snapshot_delete(op.path, name)
    elif op.target:
        Path(op.target).unlink(missing_ok=True)
