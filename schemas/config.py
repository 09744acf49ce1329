"""Parsed xl-style configuration: domain configs (xl.cfg) and snapshot configs
(xl.snapshot.cfg), and xl disk specs (xl-disk-configuration(5))."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DiskFormat = Literal["raw", "qcow2", "qcow", "vhd", "qed"]
SnapshotType = Literal["internal", "external"]


class DiskSpec(BaseModel):
    """One xl disk spec, e.g. ``'/img/a.qcow2,qcow2,xvda,rw'`` or
    ``'format=qcow2, vdev=xvda, target=/img/a.qcow2'``."""

    model_config = ConfigDict(frozen=True)

    vdev: str
    target: str | None = None  # None: empty drive (e.g. an ejected cdrom)
    format: DiskFormat = "raw"
    access: Literal["rw", "ro"] = "rw"
    devtype: Literal["disk", "cdrom"] = "disk"
    backendtype: str | None = None  # phy / qdisk / tap, when given

    @property
    def writable(self) -> bool:
        return self.access == "rw" and self.devtype == "disk"

    def to_spec(self) -> str:
        """Render back to xl keyword syntax (target last, as xl requires)."""
        parts = [f"vdev={self.vdev}", f"format={self.format}", f"access={self.access}"]
        if self.devtype == "cdrom":
            parts.append("devtype=cdrom")
        if self.backendtype:
            parts.append(f"backendtype={self.backendtype}")
        if self.target is not None:
            parts.append(f"target={self.target}")
        return ", ".join(parts)


class DomainConfig(BaseModel):
    """The subset of xl.cfg that domsnap needs to (re)start a domain."""

    name: str
    uuid: str | None = None
    type: Literal["pv", "pvh", "hvm"] = "pvh"
    memory: int = Field(default=128, ge=16, description="MiB")
    vcpus: int = Field(default=1, ge=1, le=64)
    kernel: str | None = None
    ramdisk: str | None = None
    extra: str | None = None
    disks: list[DiskSpec] = Field(default_factory=list)
    # Every other key of the file, kept verbatim (xl-typed values: str | int | list).
    other: dict[str, object] = Field(default_factory=dict)


class SnapshotDiskChoice(BaseModel):
    """A disk entry of ``disk=[...]`` in xl.snapshot.cfg."""

    vdev: str
    type: SnapshotType | None = None  # None: the file's `type`
    format: DiskFormat | None = None
    target: str | None = None  # the overlay path, for external


class SnapshotConfig(BaseModel):
    """A parsed xl.snapshot.cfg. ``memory``: True = NAME.save in the host's
    snapshot dir, False = disk-only, a string = an absolute path."""

    name: str | None = None
    description: str | None = None
    memory: bool | str = True
    type: SnapshotType = "internal"
    disks: list[SnapshotDiskChoice] | None = None
