"""The format of every image domsnap deals with, and backing chains walked with it.

qemu-img is never left to probe an image: a raw image whose guest wrote something
that looks like a qcow2 header must never be taken for one (QEMU would then follow
a backing file the guest chose). The format of an image comes from what domsnap
knows: the domain config (the active images), the records (a snapshot's frozen
image: ``DiskSnapshot.format``; its overlay: ``overlay_format``, qcow2 when domsnap
made it), and, going down a chain, the backing format each overlay's header names,
which is what QEMU opens the backing file with. domsnap writes that backing format
into every overlay it makes (``-F``, or QEMU's own snapshot commands); a chain whose
backing format is implicit is refused rather than guessed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from domsnap.errors import Refused
from schemas.config import DomainConfig
from schemas.models import SnapshotRecord
from workers.block.qemu_img import QemuImg

# Formats domsnap snapshots externally (as the overlay's backing) and merges into.
OVERLAY_BASES = ("qcow2", "raw")


def known_formats(config: DomainConfig | None,
                  records: Iterable[SnapshotRecord]) -> dict[str, str]:
    """Image path -> format, as the config and the records say. Where they differ the
    stronger claim wins: an overlay domsnap made is qcow2 over anything a record or a
    config (of an older domsnap) said of the same file; the config wins over a record's
    frozen image (it names what the domain is opened with)."""
    recs = list(records)
    out: dict[str, str] = {}
    for rec in recs:
        for d in rec.disks:
            out.setdefault(d.file, d.format)
    if config is not None:
        for spec in config.disks:
            if spec.target:
                out[spec.target] = spec.format
    for rec in recs:
        for d in rec.disks:
            if d.overlay and d.strategy != "lvm":
                out[d.overlay] = d.overlay_format or "qcow2"
    return out


def walk(img: QemuImg, path: str | None, fmt: str,
         known: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(image, format)`` for ``path`` (opened as ``fmt``) and every image below it,
    top first; each backing file with the format its overlay's header names for it.
    Stops at a file that does not exist. Refused for a backing file named without a
    format that domsnap does not know either (``known``)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    p, f = path, fmt
    while p and p not in seen and os.path.exists(p):
        out.append((p, f))
        seen.add(p)
        if f == "raw":  # no header, no backing file
            break
        backing, bfmt = img.backing(p, fmt=f, force_share=True)
        if backing is None:
            break
        if bfmt is None:
            bfmt = (known or {}).get(backing)
            if bfmt is None:
                raise Refused(
                    f"{p} names its backing file {backing} without a format, and domsnap does "
                    "not guess formats (QEMU would probe it); name it with `qemu-img rebase "
                    f"-u -f {f} -b {backing} -F FORMAT {p}`", path=p)
        p, f = backing, bfmt
    return out
