"""xl.cfg subset parser and the libxl-shaped domain config (stdlib only).

``parse_xl_cfg`` reads xl.cfg(5) syntax (``KEY = "string" | number | [ list ]``,
``#`` comments, ``;`` or newlines between settings); ``to_libxl`` turns the values
the stand-in understands into the dict libxl keeps for a domain, the one that
``xl list -l`` prints under ``"config"`` and that ``xl save`` writes into the save
file. ``libxl_json`` prints such data the way libxl's yajl generator does.

Unknown keys are ignored (as far as the stand-in is concerned). Keys used:
name, uuid, type/builder, memory, maxmem, vcpus, maxvcpus, kernel, ramdisk,
cmdline/root/extra, disk, device_model_stubdomain_override, on_poweroff,
on_reboot, on_watchdog, on_crash, on_soft_reset.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from typing import Any

INVALID_DOMID = 4294967295
DOM0_CONFIG: dict[str, Any] = {
    "c_info": {"type": "pv", "name": "Domain-0"},
    "b_info": {
        "max_memkb": 17179869180,
        "target_memkb": 1048575,
        "sched_params": {"sched": "credit2", "weight": 256, "cap": 0},
        "type.pv": {},
        "arch_arm": {},
        "arch_x86": {},
    },
}

CfgValue = str | list[str]


class CfgError(Exception):
    """A config xl would refuse; ``lines`` are what xl prints (without newlines)."""

    def __init__(self, *lines: str, rc: int = 1) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)
        self.rc = rc


# --------------------------------------------------------------------------- syntax

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+) | (?P<comment>\#[^\n]*) | (?P<nl>\n) |
    (?P<str>"(?:[^"\\\n]|\\.)*"|'[^'\n]*') |
    (?P<word>[A-Za-z0-9_.+\-/:@]+) | (?P<punct>[=\[\],;])
""", re.VERBOSE)


def _unquote(tok: str) -> str:
    if tok.startswith("'"):
        return tok[1:-1]
    out, i, body = [], 0, tok[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_xl_cfg(text: str, source: str) -> dict[str, CfgValue]:
    """``KEY = VALUE`` settings; a repeated key replaces the earlier value (as in libxlu)."""
    toks: list[tuple[str, str, int]] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _syntax(source, line, text[pos:pos + 1])
        kind = m.lastgroup or ""
        if kind == "nl":
            toks.append(("nl", "\n", line))
            line += 1
        elif kind in ("str", "word", "punct"):
            toks.append((kind, m.group(), line))
        pos = m.end()
    toks.append(("eof", "", line))

    values: dict[str, CfgValue] = {}
    i = 0

    def take() -> tuple[str, str, int]:
        nonlocal i
        tok = toks[i]
        if tok[0] != "eof":
            i += 1
        return tok

    def skip_nl() -> None:
        nonlocal i
        while toks[i][0] == "nl":
            i += 1

    while True:
        kind, text_, ln = take()
        if kind == "eof":
            return values
        if kind == "nl" or text_ == ";":
            continue
        if kind != "word" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", text_):
            raise _syntax(source, ln, text_)
        key = text_
        kind, text_, ln = take()
        if text_ != "=":
            raise _syntax(source, ln, text_ or "end of file")
        kind, text_, ln = take()
        if kind in ("str", "word"):
            values[key] = _unquote(text_) if kind == "str" else text_
        elif text_ == "[":
            items: list[str] = []
            while True:
                skip_nl()
                kind, text_, ln = take()
                if text_ == "]":
                    break
                if kind not in ("str", "word"):
                    raise _syntax(source, ln, text_ or "end of file")
                items.append(_unquote(text_) if kind == "str" else text_)
                skip_nl()
                kind, text_, ln = take()
                if text_ == "]":
                    break
                if text_ != ",":
                    raise _syntax(source, ln, text_ or "end of file")
            values[key] = items
        else:
            raise _syntax(source, ln, text_ or "end of file")
        kind, text_, ln = take()
        if kind not in ("nl", "eof") and text_ != ";":
            raise _syntax(source, ln, text_)


def _syntax(source: str, line: int, near: str) -> CfgError:
    return CfgError(f"{source}:{line}: config parsing error near `{near}': syntax error",
                    "Failed to parse config: Invalid argument")


# --------------------------------------------------------------------------- disks

_PREFIXES = ("phy", "file", "aio", "tap", "tap2", "tapdisk", "ioemu", "raw", "qcow", "qcow2",
             "vhd", "qed")
_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")


def parse_disk(spec: str) -> dict[str, Any]:
    """One xl-disk-configuration(5) spec as a libxl ``libxl_device_disk`` dict.

    Positional values fill target, format, vdev, access in that order (a legacy
    target prefix such as ``phy:`` stands for the format); ``target=`` takes the
    rest of the spec, commas included.
    """
    got: dict[str, str] = {}
    flags: set[str] = set()
    rest = spec
    while rest.strip():
        m = re.match(r"\s*target\s*=(.*)$", rest, re.S)
        if m:
            got["target"] = m.group(1).strip()
            break
        item, _, rest = rest.partition(",")
        item = item.strip()
        if "=" in item:
            key, _, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if key not in ("format", "vdev", "access", "devtype", "backendtype", "backend",
                           "script", "specification", "transport", "colo-host",
                           "colo-port", "colo-export", "active-disk", "hidden-disk"):
                raise _disk_error(spec, key)
            got[key] = value
        elif item in ("cdrom",):
            got["devtype"] = "cdrom"
        elif item in ("discard", "no-discard", "direct-io-safe", "trusted", "untrusted",
                      "colo"):
            flags.add(item)
        else:
            slot = next((s for s in ("target", "format", "vdev", "access") if s not in got), None)
            if slot is None:
                raise _disk_error(spec, item)
            if slot == "target":
                item = _strip_prefixes(item, got)
            got[slot] = item
    vdev, _, suffix = got.get("vdev", "").partition(":")
    if not vdev:
        raise CfgError(f"xl: disk specification \"{spec}\" has no vdev",
                       "Failed to parse config: Invalid argument")
    cdrom = got.get("devtype") == "cdrom" or suffix == "cdrom"
    fmt = got.get("format") or ("raw" if got.get("target") or not cdrom else "empty")
    if fmt not in _FORMATS:
        raise _disk_error(spec, fmt)
    access = got.get("access") or "rw"
    if access not in ("r", "ro", "w", "rw"):
        raise _disk_error(spec, access)
    backend = got.get("backendtype") or ("phy" if got.get("legacy_phy") else "qdisk")
    if backend not in ("phy", "qdisk", "tap", "standalone"):
        raise _disk_error(spec, backend)
    disk: dict[str, Any] = {}
    if got.get("target"):
        disk["pdev_path"] = got["target"]
    disk["vdev"] = vdev
    disk["backend"] = backend
    disk["format"] = fmt
    if access in ("w", "rw") and not cdrom:
        disk["readwrite"] = 1
    if cdrom:
        disk["is_cdrom"] = 1
    disk["colo_restore_enable"] = "False"
    return disk


def _strip_prefixes(target: str, got: dict[str, str]) -> str:
    prefixed = False
    while True:
        head, colon, tail = target.partition(":")
        if not colon or head not in _PREFIXES:
            break
        prefixed = True
        if head in _FORMATS:
            got["format"] = head
        elif head == "phy":
            got["legacy_phy"] = "1"
        target = tail
    if prefixed:
        got.setdefault("format", "raw")  # a prefix stands for the format: vdev comes next
    return target


def _disk_error(spec: str, near: str) -> CfgError:
    return CfgError(f"xl: error parsing disk spec \"{spec}\" near `{near}'",
                    "Failed to parse config: Invalid argument")


# --------------------------------------------------------------------------- libxl config

_ACTIONS = {"destroy": "destroy", "restart": "restart", "rename-restart": "restart_rename",
            "preserve": "preserve", "coredump-destroy": "coredump_destroy",
            "coredump-restart": "coredump_restart", "soft-reset": "soft_reset"}


def _int(values: dict[str, CfgValue], key: str, source: str) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, list):
        raise CfgError(f"{source}: {key} must be a number", "Failed to parse config")
    try:
        return int(value, 0)
    except ValueError:
        raise CfgError(f"{source}: {key} must be a number, not \"{value}\"",
                       "Failed to parse config") from None


def _str(values: dict[str, CfgValue], key: str) -> str | None:
    value = values.get(key)
    return value if isinstance(value, str) else None


def to_libxl(values: dict[str, CfgValue], source: str) -> dict[str, Any]:
    """The libxl domain config (c_info, b_info, disks, on_*) for parsed xl.cfg values."""
    name = _str(values, "name")
    if not name:
        raise CfgError("Domain name must be specified.")
    dtype = _str(values, "type")
    if dtype is None:
        dtype = "hvm" if _str(values, "builder") == "hvm" else "pv"
    if dtype not in ("pv", "pvh", "hvm"):
        raise CfgError(f"Invalid domain type {dtype}.")
    dom_uuid = _str(values, "uuid") or str(uuidlib.uuid4())
    try:
        dom_uuid = str(uuidlib.UUID(dom_uuid))
    except ValueError:
        raise CfgError(f"Failed to parse UUID: {dom_uuid}") from None

    memory = _int(values, "memory", source)
    maxmem = _int(values, "maxmem", source)
    target_mib = memory if memory is not None else (maxmem if maxmem is not None else 32)
    max_mib = maxmem if maxmem is not None else target_mib
    vcpus = _int(values, "vcpus", source) or 1
    max_vcpus = _int(values, "maxvcpus", source) or vcpus

    b_info: dict[str, Any] = {
        "max_vcpus": max_vcpus,
        "avail_vcpus": list(range(vcpus)),
        "max_memkb": max_mib * 1024,
        "target_memkb": target_mib * 1024,
        "video_memkb": 0,
    }
    stub = values.get("device_model_stubdomain_override")
    if isinstance(stub, str) and stub.strip().lower() in ("1", "true", "yes"):
        b_info["device_model_stubdomain"] = "True"
    b_info["sched_params"] = {"sched": "credit2", "weight": 256, "cap": 0}
    b_info["claim_mode"] = "True"
    kernel = _str(values, "kernel")
    if kernel:
        b_info["kernel"] = kernel
    cmdline = _str(values, "cmdline")
    if cmdline is None:
        root, extra = _str(values, "root"), _str(values, "extra")
        cmdline = f"root={root} {extra or ''}".rstrip() if root else extra
    if cmdline:
        b_info["cmdline"] = cmdline
    ramdisk = _str(values, "ramdisk")
    if ramdisk:
        b_info["ramdisk"] = ramdisk
    b_info[f"type.{dtype}"] = {}
    b_info["arch_arm"] = {}
    b_info["arch_x86"] = {"msr_relaxed": "False"}

    config: dict[str, Any] = {
        "c_info": {"type": dtype, "name": name, "domid": INVALID_DOMID, "uuid": dom_uuid,
                   "run_hotplug_scripts": "True"},
        "b_info": b_info,
    }
    disks = values.get("disk", [])
    if isinstance(disks, str):
        disks = [disks]
    if disks:
        config["disks"] = [parse_disk(spec) for spec in disks]
    defaults = {"on_poweroff": "destroy", "on_reboot": "restart", "on_watchdog": "destroy",
                "on_crash": "destroy", "on_soft_reset": "soft-reset"}
    for key, default in defaults.items():
        raw = _str(values, key) or default
        action = _ACTIONS.get(raw)
        if action is None:
            raise CfgError(f"Unknown {key} action \"{raw}\" specified")
        if action != "destroy":  # libxl leaves out fields equal to their default
            config[key] = action
    return config


# --------------------------------------------------------------------------- libxl JSON


def libxl_json(value: Any, depth: int = 0) -> str:
    """``value`` as libxl's yajl generator prints it (4-space indent; an empty map
    or list is opened, left with an empty line, and closed)."""
    pad = "    " * depth
    if isinstance(value, dict):
        if not value:
            return "{\n\n" + pad + "}"
        items = [f"{pad}    {json.dumps(k, ensure_ascii=False)}: {libxl_json(v, depth + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if not value:
            return "[\n\n" + pad + "]"
        items = [f"{pad}    {libxl_json(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def summary(config: dict[str, Any]) -> dict[str, Any]:
    """What QEMU needs from a libxl config (KeyError/TypeError if it is malformed)."""
    c_info, b_info = config["c_info"], config["b_info"]
    return {
        "name": str(c_info["name"]),
        "uuid": str(c_info["uuid"]),
        "type": str(c_info.get("type", "pv")),
        "memory_mib": max(1, int(b_info.get("target_memkb", 32768)) // 1024),
        "vcpus": max(1, len(b_info.get("avail_vcpus", [0]))),
        "kernel": b_info.get("kernel"),
        "ramdisk": b_info.get("ramdisk"),
        "cmdline": b_info.get("cmdline"),
        "stubdom": b_info.get("device_model_stubdomain") == "True",
        "disks": list(config.get("disks", [])),
    }
