"""LVM snapshots of raw disks served by Xen's blkback (``phy:``), through an injected Runner.

Every command is ``lvm <subcommand> ...`` (argv only, with the Runner's timeout).
Volumes are always named to LVM as ``VG/LV`` built from names that ``lvs`` printed
and that were checked against LVM's name rules, so no argument ever starts with ``-``.

Facts this module relies on (lvs(8), lvcreate(8), lvremove(8), lvconvert(8), lvm(8)):

* ``lvs`` takes ``/dev/VG/LV`` (or ``/dev/mapper/VG-LV``) as a *name*: it never opens
  the path. Any other shape under /dev is read as a VG name (``lvs /dev/sda`` looks
  for VG "sda"; ``lvs /dev/vg0`` lists every LV of vg0), so :meth:`Lvm.probe` runs
  lvs only for paths of exactly that shape. An unknown LV or VG exits 5 with
  ``Failed to find logical volume "vg/lv"`` or ``Volume group "vg" not found``.
* ``lv_attr``: char 1 ``s`` snapshot, ``S`` merging snapshot, ``O`` origin with a
  merging snapshot; char 5 ``a`` active, ``I``/``S`` invalid snapshot (its COW space
  overflowed); char 6 ``o`` open.
* ``lvconvert --merge`` exits 0 but only *delays* the merge (to the next activation)
  when the origin or the snapshot is open; otherwise it waits for the merge, which
  consumes the snapshot. :meth:`Lvm.revert` checks both are closed before, and that
  the snapshot is gone after.
* ``lvremove`` asks before removing an active LV; ``--yes`` answers it.

Snapshot LV names (:meth:`Lvm.snapshot_name`): ``<origin>.ds.<name>`` when that is a
valid LV name as is. Otherwise (a ``:`` in the name, a reserved substring such as
``_tmeta``, or too long) ``:`` becomes ``_``, reserved ``_xxx`` become ``.xxx``, the
text is cut to fit and ``+`` and 10 hex digits of sha1("<origin>/<name>") are
appended. Snapshot names never contain ``+``, so the two forms never collide. The
limit is LVM's 127 characters, and also device-mapper's 127 for the snapshot's
``VG-LV-cow`` device (``-`` doubled in dm names). As names alone cannot rule out
every clash between origins, each use also checks the LV's origin.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass

from domsnap.errors import (
    BackendError,
    CommandFailed,
    Conflict,
    InvalidInput,
    NotFound,
    Refused,
    SnapshotExists,
    UnknownSnapshot,
)
from workers.hostio.runner import Runner

__all__ = ["LogicalVolume", "Lvm"]

_LV_FIELDS = "vg_name,lv_name,lv_size,origin,lv_path,lv_attr"
_NAME = r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*"
_NAME_RE = re.compile(_NAME)
_LV_PATH_RE = re.compile(rf"/dev/({_NAME})/({_NAME})")
_SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_RESERVED = ("_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare",
             "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
_NAME_MAX, _COW_LAYER, _HASH_LEN = 127, "-cow", 10  # 127: NAME_LEN/DM_NAME_LEN less NUL
_EXTENTS_RE = re.compile(r"\d+%(ORIGIN|FREE|VG|PVS)")
_SIZE_RE = re.compile(r"\d+(\.\d+)?[bBsSkKmMgGtTpPeE]")
_NOT_AN_LV = ("failed to find logical volume", "not found", "not a valid",
              "invalid path for logical volume")
_NOT_ANSWERED = ("permission denied", "non-root")
_LVM_ECMD_FAILED = 5


@dataclass(frozen=True)
class LogicalVolume:
    """One LV as lvs reports it; ``origin`` is the LV this one snapshots, or None."""

    vg: str
    lv: str
    path: str
    size_bytes: int
    origin: str | None


def _lv_path(path: str) -> str | None:
    """``path`` normalised if it has the shape of an LV path (/dev/VG/LV), else None."""
    norm = os.path.normpath(path) if path else ""
    return norm if _LV_PATH_RE.fullmatch(norm) else None


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _dm_len(name: str) -> int:
    """Length of ``name`` inside a device-mapper name, where each ``-`` is doubled."""
    return len(name) + name.count("-")


def _not_an_lv(exc: CommandFailed) -> bool:
    """True when lvs/lvremove failed only because the LV or its VG does not exist."""
    err = exc.stderr.lower()
    return (exc.returncode == _LVM_ECMD_FAILED and any(s in err for s in _NOT_AN_LV)
            and not any(s in err for s in _NOT_ANSWERED))


def _vglv(lv: LogicalVolume) -> str:
    """``VG/LV`` as a command argument, after checking both names."""
    for value, field in ((lv.vg, "vg"), (lv.lv, "lv")):
        if not _NAME_RE.fullmatch(value) or len(value) > _NAME_MAX:
            raise InvalidInput(f"invalid LVM {field} name {value!r}", field=field)
    return f"{lv.vg}/{lv.lv}"


def _merge_blocker(where: str, o_attr: str, snap: str, s_attr: str) -> str | None:
    """Why ``lvconvert --merge`` must not run now (from both lv_attr), or None."""
    if len(o_attr) < 6 or len(s_attr) < 6:
        return f"cannot tell whether they are in use (lv_attr {o_attr!r}, {s_attr!r})"
    if s_attr[0] == "S" or o_attr[0] == "O":
        return f"a merge into {where} is pending already"
    if s_attr[4] in ("I", "S"):
        return f"snapshot {snap} is invalid (its copy-on-write space filled up)"
    if o_attr[4] != "a":
        return f"{where} is not active (activate it: lvchange -ay {where})"
    if o_attr[5] != "-":
        return f"{where} is open (stop the domain using it first)"
    if s_attr[5] != "-":
        return f"snapshot {snap} is open"
    return None


class Lvm:
    """Snapshots of logical volumes: probe, create, remove, revert (merge)."""

    def __init__(self, runner: Runner, *, timeout: float = 600.0, binary: str = "lvm",
                 snapshot_size: str = "100%ORIGIN") -> None:
        if _EXTENTS_RE.fullmatch(snapshot_size):
            self._size_args = ["--extents", snapshot_size]
        elif _SIZE_RE.fullmatch(snapshot_size):
            self._size_args = ["--size", snapshot_size]
        else:
            raise InvalidInput(f"snapshot size {snapshot_size!r} is neither N%ORIGIN (or"
                               " %FREE, %VG, %PVS) nor a size with a unit such as 10G",
                               field="snapshot_size")
        self._runner = runner
        self.timeout = timeout
        self.binary = binary
        self.snapshot_size = snapshot_size

    def _run(self, *args: str) -> str:
        return self._runner([self.binary, *args], timeout=self.timeout).stdout

    # -- inspection ------------------------------------------------------------

    def _lookup(self, path: str) -> tuple[LogicalVolume, str] | None:
        """The LV at ``path`` and its lv_attr, or None when it is no LV."""
        norm = _lv_path(path)
        if norm is None or _is_regular_file(norm):
            return None
        argv_tail = ["lvs", "--noheadings", "--nosuffix", "--units", "b",
                     "--separator", "|", "-o", _LV_FIELDS, norm]
        try:
            out = self._run(*argv_tail)
        except CommandFailed as exc:
            if _not_an_lv(exc):
                return None
            raise
        rows = [line.strip().split("|") for line in out.splitlines() if line.strip()]
        if len(rows) != 1 or len(rows[0]) != 6:
            raise CommandFailed([self.binary, *argv_tail], 0,
                                f"expected one LV from lvs, got: {out.strip()[:300]!r}", out)
        vg, lv, size, origin, lv_path, attr = rows[0]
        size = size[:-3] if size.endswith(".00") else size
        if not (_NAME_RE.fullmatch(vg) and _NAME_RE.fullmatch(lv) and size.isdigit()
                and (not origin or _NAME_RE.fullmatch(origin))):
            raise CommandFailed([self.binary, *argv_tail], 0,
                                f"lvs printed an unexpected row: {out.strip()[:300]!r}", out)
        asked = _LV_PATH_RE.fullmatch(norm)
        if asked and asked[1] != "mapper" and (asked[1], asked[2]) != (vg, lv):
            raise BackendError(f"lvs {norm} answered for {vg}/{lv}", path=norm)
        return LogicalVolume(vg, lv, lv_path or f"/dev/{vg}/{lv}", int(size),
                             origin or None), attr

    def probe(self, path: str) -> LogicalVolume | None:
        """The LV at ``path`` (``/dev/VG/LV`` or ``/dev/mapper/VG-LV``), or None.

        None, without running anything, for a path of any other shape and for a
        regular file; None when lvs says there is no such LV or VG. Any other
        failure (lvm missing: exit 127; not root) is the runner's CommandFailed.
        """
        found = self._lookup(path)
        return None if found is None else found[0]

    # -- naming ------------------------------------------------------------------

    def snapshot_name(self, origin: LogicalVolume, name: str) -> str:
        """The LV name of domsnap snapshot ``name`` of ``origin`` (see the module doc)."""
        if not _SNAPSHOT_NAME_RE.fullmatch(name):
            raise InvalidInput(f"invalid snapshot name {name!r}", field="name")
        _vglv(origin)
        budget = _NAME_MAX - _dm_len(origin.vg) - 1 - len(_COW_LAYER)  # VG-LV-cow
        plain = f"{origin.lv}.ds.{name}"
        if (":" not in name and not any(r in plain for r in _RESERVED)
                and _dm_len(plain) <= budget):
            return plain
        body = plain.replace(":", "_")
        for reserved in _RESERVED:
            body = body.replace(reserved, "." + reserved[1:])
        tag = "+" + hashlib.sha1(f"{origin.lv}/{name}".encode()).hexdigest()[:_HASH_LEN]
        if budget < len(tag) + 1:
            raise Refused(f"volume group name {origin.vg!r} is too long to name snapshots in",
                          vg=origin.vg)
        while _dm_len(body) + len(tag) > budget:
            body = body[:-1]
        return body + tag

    def snapshot_path(self, origin: LogicalVolume, name: str) -> str:
        """``/dev/VG/<snapshot LV>`` of snapshot ``name`` of ``origin``."""
        return f"/dev/{origin.vg}/{self.snapshot_name(origin, name)}"

    # -- changes -----------------------------------------------------------------

    def _lvcreate(self, origin: LogicalVolume, snap: str) -> LogicalVolume:
        """Create snapshot LV ``snap`` of ``origin`` and read it back (no existence check)."""
        self._run("lvcreate", "--snapshot", "--name", snap, *self._size_args, _vglv(origin))
        path = f"/dev/{origin.vg}/{snap}"
        created = self.probe(path)
        if created is None:
            raise BackendError(f"lvcreate reported success but {path} does not exist",
                               path=path)
        return created

    def create_snapshot(self, origin: LogicalVolume, name: str) -> LogicalVolume:
        """Snapshot ``origin`` as LV :meth:`snapshot_name`; SnapshotExists if it exists.

        The snapshot gets ``snapshot_size`` (``--extents`` for N%ORIGIN, else
        ``--size``). A thin origin given a size gets a (thick) COW snapshot.
        """
        snap = self.snapshot_name(origin, name)
        path = f"/dev/{origin.vg}/{snap}"
        existing = self.probe(path)
        if existing is not None and existing.origin == origin.lv:
            raise SnapshotExists(f"snapshot {name!r} of {origin.vg}/{origin.lv} exists "
                                 f"already ({path})", name=name, path=path)
        if existing is not None:
            raise Conflict(f"cannot snapshot {origin.vg}/{origin.lv} as {path}: that LV "
                           "exists and is not a snapshot of it", name=name, path=path)
        return self._lvcreate(origin, snap)

    def remove(self, snap: str) -> None:
        """Remove the snapshot LV at path ``snap``; done already if it does not exist.

        Refused for an LV that is no snapshot (an origin, a plain volume) and for a
        snapshot being merged.
        """
        if _lv_path(snap) is None:
            raise InvalidInput(f"{snap!r} is not a logical volume path (/dev/VG/LV)",
                               field="snap")
        found = self._lookup(snap)
        if found is None:
            return
        lv, attr = found
        if lv.origin is None:
            raise Refused(f"refusing to remove {lv.vg}/{lv.lv}: it is not a snapshot",
                          path=snap)
        if attr[:1] == "S":
            raise Refused(f"refusing to remove {lv.vg}/{lv.lv}: it is being merged into "
                          f"{lv.vg}/{lv.origin}", path=snap)
        try:
            self._run("lvremove", "--yes", _vglv(lv))
        except CommandFailed as exc:
            if not _not_an_lv(exc):  # removed meanwhile: done all the same
                raise

    def revert(self, origin: LogicalVolume, name: str) -> None:
        """Bring ``origin`` back to snapshot ``name``, and keep that snapshot.

        ``lvconvert --merge`` (which consumes the snapshot), then the snapshot is
        taken again under the same name. The origin must be active and closed (the
        domain stopped) and the snapshot closed and valid: else Refused, before
        anything changes. If the merge fails nothing further runs. If a run was
        cut off after the merge, the snapshot is gone (UnknownSnapshot): take it
        again with :meth:`create_snapshot`.
        """
        snap = self.snapshot_name(origin, name)
        where, snap_path = f"{origin.vg}/{origin.lv}", f"/dev/{origin.vg}/{snap}"
        found = self._lookup(snap_path)
        if found is None or found[0].origin != origin.lv:
            raise UnknownSnapshot(f"no snapshot {name!r} of {where} ({snap_path})",
                                  name=name, path=snap_path)
        s_attr = found[1]
        current = self._lookup(f"/dev/{where}")
        if current is None:
            raise NotFound(f"logical volume {where} not found", path=origin.path)
        o_attr = current[1]
        reason = _merge_blocker(where, o_attr, snap, s_attr)
        if reason is not None:
            raise Refused(f"cannot revert {where} to snapshot {name!r}: {reason}",
                          path=origin.path, name=name)
        self._run("lvconvert", "--merge", f"{origin.vg}/{snap}")
        if self.probe(snap_path) is not None:
            raise BackendError(f"LVM delayed the merge of {snap} into {where} to its next "
                               "activation; the snapshot was not taken again",
                               path=origin.path, name=name)
        try:
            self._lvcreate(current[0], snap)
        except Exception as exc:
            exc.add_note(f"{where} was reverted to snapshot {name!r}, which the merge "
                         "consumed and which could not be taken again")
            raise
