"""Pure parsers for the output of Xen's ``xl`` toolstack (checked against 4.17):
``xl list``, ``xl list -l``, ``xl domid``, and the translation of a libxl domain
config (the ``config`` object of ``xl list -l``) into a :class:`DomainConfig`.

No I/O and no subprocess: the xl driver runs the commands and hands the text here,
so every shape xl prints can be tested from captured output
(``tests/fixtures/xl/``). Facts the parsing relies on:

- ``xl list -l`` is libxl's JSON: every field equal to its default is omitted
  (``readwrite`` 0, ``is_cdrom`` 0, ``backend``/``format`` "unknown", the nil
  uuid of Domain-0, ``on_poweroff`` "destroy"...). Enums are lowercase strings,
  ``defbool`` fields the strings "True"/"False", bitmaps arrays of set bit indexes.
  Anything missing therefore means "default", never "error"; entries that are not
  objects or have no name are skipped, unknown keys ignored.
- ``xl list`` is a fixed table whose State column has one position per flag:
  ``r`` running, ``b`` blocked, ``p`` paused, ``s`` shutdown, ``c`` crashed,
  ``d`` dying.

Output that is not what xl prints (an error message fed in by mistake, broken
JSON) raises :class:`XlParseError` quoting the start of the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import ValidationError

from domsnap.errors import XlParseError
from schemas.config import DiskFormat, DiskSpec, DomainConfig
from schemas.models import DomainState

__all__ = [
    "XlDisk",
    "XlDomain",
    "XlListRow",
    "XlParseError",
    "domain_config_from_libxl",
    "parse_domid",
    "parse_list",
    "parse_list_long",
    "parse_list_rows",
]

DomainType = Literal["pv", "pvh", "hvm"]

_LIST_HEADER = ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
# running, blocked, paused, shutdown, the shutdown reason (xl_info.c list_domains:
# "-rscwS"[reason] = poweroff, reboot, suspend, crash, watchdog, soft_reset; "?" for a
# reason xl does not know; "-" when not shut down), dying
_FLAGS_RE = re.compile(r"[r-][b-][p-][s-][-rscwS?][d-]\Z")
_SHUTDOWN_STATES: dict[str, DomainState] = {"s": "suspended", "c": "unknown"}
_UINT_RE = re.compile(r"[0-9]{1,19}\Z")
_TIME_RE = re.compile(r"[0-9]{1,19}(?:\.[0-9]+)?\Z")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")
# the rule domsnap.xlcfg applies to xl.cfg names: a DomainConfig must be writable
_DOMAIN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

# libxl_types.idl enumerations: value -> the string libxl's JSON uses
_BACKENDS = {0: "unknown", 1: "phy", 2: "tap", 3: "qdisk", 4: "standalone"}
_FORMATS = {0: "unknown", 1: "qcow", 2: "qcow2", 3: "vhd", 4: "raw", 5: "empty", 6: "qed"}
_DOMAIN_TYPES = {-1: "invalid", 1: "hvm", 2: "pv", 3: "pvh"}
# libxl_action_on_shutdown -> the spelling xl.cfg(5) wants (xl_parse.c's names)
_ACTIONS = {
    "destroy": "destroy",
    "restart": "restart",
    "restart_rename": "rename-restart",
    "preserve": "preserve",
    "coredump_destroy": "coredump-destroy",
    "coredump_restart": "coredump-restart",
    "soft_reset": "soft-reset",
}
_ACTION_VALUES = dict(enumerate(_ACTIONS, start=1))  # DESTROY = 1 ... SOFT_RESET = 7
# what xl's parse_config_data sets when an xl.cfg names no action (xl.cfg(5))
_XL_DEFAULT_ACTIONS = {"on_poweroff": "destroy", "on_reboot": "restart", "on_watchdog": "destroy",
                       "on_crash": "destroy", "on_soft_reset": "soft-reset"}
_SPEC_FORMATS: dict[str, DiskFormat] = {f: f for f in get_args(DiskFormat)}
_TYPES: dict[str, DomainType] = {"pv": "pv", "pvh": "pvh", "hvm": "hvm"}
_VIF_KEYS = ("mac", "bridge", "model", "ip", "script")


# --------------------------------------------------------------------------- xl list


@dataclass(frozen=True)
class XlListRow:
    """One row of ``xl list``."""

    name: str
    domid: int
    mem_mib: int
    vcpus: int
    flags: str  # e.g. "r-----", "-b----", "--p---"
    cpu_time_s: float

    @property
    def state(self) -> DomainState:
        """The domain's state from its flags. Dying wins; then a shut-down domain (still
        listed, so it still holds its memory and device model): for a suspend it is
        ``suspended``, after a crash ``unknown`` (on_crash=preserve keeps it), else
        ``shutdown``; a reason letter without the shutdown flag is ``unknown``."""
        if self.flags[5] == "d":
            return "dying"
        reason = self.flags[4]
        if self.flags[3] == "s":
            return _SHUTDOWN_STATES.get(reason, "shutdown")
        if reason != "-":
            return "unknown"
        if self.flags[2] == "p":
            return "paused"
        return "running"


def parse_list(text: str) -> list[XlListRow]:
    """Parse the ``xl list`` table (header first; Domain-0 included like any row).
    Columns are split from the right, so a name is whatever precedes the ID. Any row
    it cannot read is an :class:`XlParseError` (see :func:`parse_list_rows`)."""
    rows, bad = parse_list_rows(text)
    if bad:
        raise bad[0]
    return rows


def parse_list_rows(text: str) -> tuple[list[XlListRow], list[XlParseError]]:
    """The rows of an ``xl list`` table that parse, and an error for each that does not:
    one odd row must not hide every other domain of the host."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].split() != _LIST_HEADER:
        raise XlParseError("not an `xl list` table (no Name ID Mem VCPUs State Time(s) header)",
                           text)
    rows: list[XlListRow] = []
    bad: list[XlParseError] = []
    for line in lines[1:]:
        try:
            rows.append(_list_row(line))
        except XlParseError as exc:
            bad.append(exc)
    return rows, bad


def _list_row(line: str) -> XlListRow:
    parts = line.rsplit(None, 5)
    if len(parts) != 6:
        raise XlParseError("`xl list` row has too few columns", line)
    name, domid, mem, vcpus, flags, cpu = (p.strip() for p in parts)
    if not name or not all(_UINT_RE.match(v) for v in (domid, mem, vcpus)):
        raise XlParseError("`xl list` row has a bad name, ID, Mem or VCPUs", line)
    if not _FLAGS_RE.match(flags):
        raise XlParseError(f"`xl list` row has unknown state flags {flags!r}", line)
    if not _TIME_RE.match(cpu):
        raise XlParseError(f"`xl list` row has a bad Time(s) {cpu!r}", line)
    return XlListRow(name, int(domid), int(mem), int(vcpus), flags, float(cpu))


def parse_domid(text: str) -> int:
    """Parse ``xl domid NAME``: one decimal number."""
    value = text.strip()
    if not _UINT_RE.match(value):
        raise XlParseError("`xl domid` did not print a domain id", text)
    return int(value)


# --------------------------------------------------------------------------- xl list -l


@dataclass(frozen=True)
class XlDisk:
    """One entry of a libxl config's ``disks``, defaults filled in."""

    vdev: str
    pdev_path: str | None  # None: an empty (ejected) cdrom
    backend: str  # phy | tap | qdisk | standalone | unknown
    format: str  # raw | qcow | qcow2 | vhd | qed | empty | unknown
    readwrite: bool
    is_cdrom: bool


@dataclass(frozen=True)
class XlDomain:
    """One domain of ``xl list -l``; ``config`` is libxl's raw config object."""

    domid: int
    name: str
    uuid: str | None  # None for Domain-0 (libxl omits the nil uuid)
    type: DomainType
    disks: tuple[XlDisk, ...]
    config: dict[str, Any] = field(hash=False)


def parse_list_long(text: str) -> list[XlDomain]:
    """Parse ``xl list -l`` (a JSON array, one object per domain, Domain-0 included).

    Entries that are not objects, lack ``config.c_info.name`` or a ``domid`` are
    skipped; broken JSON or anything but an array is an XlParseError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise XlParseError(f"`xl list -l` output is not JSON ({exc.msg}, line {exc.lineno})",
                           text) from None
    except (ValueError, RecursionError):
        raise XlParseError("`xl list -l` output is not usable JSON", text) from None
    if not isinstance(data, list):
        raise XlParseError("`xl list -l` output is not a JSON array", text)
    domains: list[XlDomain] = []
    for entry in data:
        if not isinstance(entry, dict):
            continue
        config, domid = entry.get("config"), _int(entry.get("domid"))
        if not isinstance(config, dict) or domid is None:
            continue
        c_info = _obj(config.get("c_info"))
        name = c_info.get("name")
        if not isinstance(name, str) or not name:
            continue
        domains.append(
            XlDomain(domid, name, _uuid(c_info.get("uuid")), _domain_type(config),
                     tuple(_disks(config)), config)
        )
    return domains


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    """An integer field (a JSON number, or its decimal string); never a bool."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _UINT_RE.match(value):
        return int(value)
    return None


def _flag(value: object) -> bool:
    """A libxl boolean: an integer (``readwrite``, ``is_cdrom``), a defbool string
    ("True"/"False"/"<default>") or a JSON bool. Absent or unreadable: False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return False


def _enum(value: object, values: dict[int, str]) -> str:
    """A libxl enum given by name (any case) or by number; anything else "unknown"."""
    if isinstance(value, str) and value.lower() in values.values():
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return values.get(value, "unknown")
    return "unknown"


def _str(value: object) -> str | None:
    """A string field; libxl omits unset strings, an empty one counts as unset."""
    return value if isinstance(value, str) and value else None


def _uuid(value: object) -> str | None:
    return value.lower() if isinstance(value, str) and _UUID_RE.match(value) else None


def _domain_type(config: dict[str, Any]) -> DomainType:
    """``c_info.type``; when missing or invalid, the key of ``b_info``'s type union
    (``type.pv``/``type.pvh``/``type.hvm``); else "pv"."""
    kind = _TYPES.get(_enum(_obj(config.get("c_info")).get("type"), _DOMAIN_TYPES))
    if kind is not None:
        return kind
    b_info = _obj(config.get("b_info"))
    return next((t for k, t in _TYPES.items() if f"type.{k}" in b_info), "pv")


def _disks(config: dict[str, Any]) -> list[XlDisk]:
    """The config's ``disks`` with libxl's defaults filled in; entries that are not
    objects or have no vdev are skipped."""
    disks: list[XlDisk] = []
    entries = config.get("disks")
    for disk in entries if isinstance(entries, list) else []:
        if not isinstance(disk, dict) or not _str(disk.get("vdev")):
            continue
        disks.append(
            XlDisk(
                vdev=disk["vdev"],
                pdev_path=_str(disk.get("pdev_path")),
                backend=_enum(disk.get("backend"), _BACKENDS),
                format=_enum(disk.get("format"), _FORMATS),
                readwrite=_flag(disk.get("readwrite")),
                is_cdrom=_flag(disk.get("is_cdrom")),
            )
        )
    return disks


# --------------------------------------------------------------------------- libxl -> DomainConfig


def domain_config_from_libxl(config: dict[str, Any]) -> DomainConfig:
    """Translate a libxl domain config (``xl list -l``'s ``config``) into the
    DomainConfig an xl.cfg would parse to, so that the domain can be re-created
    with the same name, uuid, type, memory, vcpus, boot, disks, nics and actions.

    xl.cfg's ``vcpus`` is the number online at boot and ``maxvcpus`` the maximum:
    libxl keeps the maximum in ``max_vcpus`` and the online ones in the
    ``avail_vcpus`` bitmap, so both come back. Keys without a DomainConfig field go
    to ``other`` in xl.cfg syntax (``maxmem``, ``maxvcpus``, ``bootloader``,
    ``bootloader_args``, ``vif``, ``on_poweroff``/``on_reboot``/``on_watchdog``/``on_crash``/
    ``on_soft_reset``,
    ``device_model_stubdomain_override``)."""
    if not isinstance(config, dict):
        raise XlParseError("a libxl domain config must be an object", repr(config))
    c_info, b_info = _obj(config.get("c_info")), _obj(config.get("b_info"))
    pv_info = _obj(b_info.get("type.pv"))  # where kernel/cmdline/... lived before 4.10
    name = c_info.get("name")
    if not isinstance(name, str) or not _DOMAIN_NAME_RE.match(name) or name in (".", ".."):
        raise XlParseError(f"c_info.name {name!r} is not a usable domain name "
                           "(1-64 of A-Z a-z 0-9 _ . -)", json.dumps(c_info))
    fields: dict[str, Any] = {"name": name, "type": _domain_type(config)}
    other: dict[str, object] = {}
    if (uuid := _uuid(c_info.get("uuid"))) is not None:
        fields["uuid"] = uuid
    target_kb, max_kb = _int(b_info.get("target_memkb")), _int(b_info.get("max_memkb"))
    target_mib = target_kb // 1024 if target_kb is not None else None
    if target_mib is not None and target_mib >= 16:
        fields["memory"] = target_mib
    if max_kb is not None and max_kb // 1024 != target_mib:
        other["maxmem"] = max_kb // 1024
    max_vcpus = _int(b_info.get("max_vcpus"))
    if max_vcpus is not None and max_vcpus >= 1:
        avail = b_info.get("avail_vcpus")
        online = len({b for b in avail if _int(b) is not None}) if isinstance(avail, list) else 0
        fields["vcpus"] = online if 0 < online < max_vcpus else max_vcpus
        if fields["vcpus"] != max_vcpus:
            other["maxvcpus"] = max_vcpus
    for key, target in (("kernel", "kernel"), ("ramdisk", "ramdisk"), ("cmdline", "extra")):
        if (value := _str(b_info.get(key)) or _str(pv_info.get(key))) is not None:
            fields[target] = value
    if (loader := _str(b_info.get("bootloader")) or _str(pv_info.get("bootloader"))) is not None:
        other["bootloader"] = loader
    args = b_info.get("bootloader_args", pv_info.get("bootloader_args"))
    if isinstance(args, list) and args and all(isinstance(a, str) for a in args):
        other["bootloader_args"] = list(args)
    # where the device model runs decides how disks can be snapshotted (no QMP socket
    # in dom0 for a stub domain): a re-created domain must keep it
    if _flag(b_info.get("device_model_stubdomain")):
        other["device_model_stubdomain_override"] = 1
    fields["disks"] = [_to_disk_spec(disk) for disk in _disks(config)]
    nics = config.get("nics")
    if isinstance(nics, list) and (vifs := [_vif(n) for n in nics if isinstance(n, dict)]):
        other["vif"] = vifs
    for key, xl_default in _XL_DEFAULT_ACTIONS.items():
        action = config.get(key)
        if action is None:
            # libxl's JSON leaves out an action equal to destroy; written back into an
            # xl.cfg, a missing one would take xl's default (on_reboot = restart)
            if xl_default != "destroy":
                other[key] = "destroy"
            continue
        if isinstance(action, int) and not isinstance(action, bool):
            action = _ACTION_VALUES.get(action)
        if isinstance(action, str) and action.lower() in _ACTIONS:
            other[key] = _ACTIONS[action.lower()]
    fields["other"] = other
    try:
        return DomainConfig.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise XlParseError(f"libxl config gives an invalid {where}: {first['msg']}",
                           json.dumps(config, default=str)) from None


def _to_disk_spec(disk: XlDisk) -> DiskSpec:
    """An XlDisk as the xl disk spec that creates it: unknown and empty formats are
    "raw" (what xl assumes), an unknown backend is left for libxl to choose."""
    return DiskSpec(
        vdev=disk.vdev,
        target=disk.pdev_path,
        format=_SPEC_FORMATS.get(disk.format, "raw"),
        access="rw" if disk.readwrite else "ro",
        devtype="cdrom" if disk.is_cdrom else "disk",
        backendtype=None if disk.backend == "unknown" else disk.backend,
    )


def _vif(nic: dict[str, Any]) -> str:
    """A libxl nic as an xl vif spec (xl-network-configuration(5)) with the fields it
    sets among mac, bridge, model, ip, script; an all-default nic is ``""``."""
    parts: list[str] = []
    for key in _VIF_KEYS:
        value = _str(nic.get(key))
        if value is None:
            continue
        if "," in value or "\n" in value:
            raise XlParseError(f"nic {key} {value!r} cannot be written as an xl vif spec",
                               json.dumps(nic))
        parts.append(f"{key}={value}")
    return ",".join(parts)
