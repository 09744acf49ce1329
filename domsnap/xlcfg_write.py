"""Writing a DomainConfig back as xl.cfg(5) text: the inverse of
:func:`domsnap.xlcfg.parse_domain_config`, so that a config domsnap changed (after an
external snapshot or a revert) can be handed back to ``xl create`` / ``xl restore``.
It writes only the subset that domsnap's parser and Xen's libxlu read alike, and
checks every result by parsing it back."""

from __future__ import annotations

import re

from domsnap.errors import ConfigFileError, InvalidInput
from domsnap.xlcfg import _disk_spec, parse_domain_config
from schemas.config import DiskSpec, DomainConfig

# Keys real xl's lexer reads (lowercase identifiers; dots as in xl.conf's vif.default.*).
_XL_KEY_RE = re.compile(r"[a-z][a-z0-9_.]*\Z")
# Control characters with no escape that both this parser and libxlu read alike.
_UNWRITABLE_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MODELED_KEYS = frozenset(
    {"name", "uuid", "builder", "type", "memory", "vcpus", "kernel", "ramdisk", "extra",
     "cmdline", "disk"}
)


def _quote(value: str, field: str) -> str:
    """``value`` as a double-quoted xl.cfg string: the inverse of :func:`_read_string`
    (``\\\\``, ``\\"`` and ``\\n``, the escapes libxlu reads the same way). A tab
    stays raw; other control characters are refused."""
    bad = _UNWRITABLE_RE.search(value)
    if bad:
        raise InvalidInput(
            f"{field}: control character {bad.group()!r} cannot be written to an xl.cfg",
            field=field,
        )
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _render(value: object, field: str, *, in_list: bool = False) -> str:
    """An ``other`` value in xl syntax: str quoted, non-negative int bare, a flat list
    of those in ``[ ... ]`` (one item a line, xen-tools style, when there are several).
    Anything else has no xl.cfg form."""
    if isinstance(value, bool):
        raise InvalidInput(f"{field}: a boolean has no xl.cfg form (write 0 or 1)", field=field)
    if isinstance(value, int):
        if value < 0:
            raise InvalidInput(f"{field}: xl.cfg has no negative numbers", field=field)
        return str(value)
    if isinstance(value, str):
        return _quote(value, field)
    if isinstance(value, list) and not in_list:
        items = [_render(v, field, in_list=True) for v in value]
        if len(items) < 2:
            return f"[ {items[0]} ]" if items else "[ ]"
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    what = "a nested list" if isinstance(value, list) else type(value).__name__
    raise InvalidInput(f"{field}: {what} has no xl.cfg form", field=field)


def _disk_entry(index: int, disk: DiskSpec) -> str:
    """A DiskSpec as the xl disk spec string, checked to parse back to the same disk
    (a vdev with a comma, a target with surrounding blanks... would not)."""
    where = f"disk {index} ({disk.vdev!r})"
    if disk.target is None and disk.devtype != "cdrom":
        raise InvalidInput(f"{where}: only a cdrom can be empty (xl: no target specified)",
                           field="disks")
    spec = disk.to_spec()
    if "\n" in spec or _UNWRITABLE_RE.search(spec):
        raise InvalidInput(f"{where}: a disk spec cannot hold control characters or newlines",
                           field="disks")
    try:
        back = _disk_spec(spec)
    except ValueError as exc:
        raise InvalidInput(f"{where}: cannot be written as an xl disk spec: {exc}",
                           field="disks") from None
    if back != disk:
        changed = next(f for f in DiskSpec.model_fields if getattr(back, f) != getattr(disk, f))
        raise InvalidInput(f"{where}: {changed} {getattr(disk, changed)!r} does not survive "
                           "being written as an xl disk spec", field="disks")
    return spec


def format_domain_config(cfg: DomainConfig) -> str:
    """Write ``cfg`` as xl.cfg(5) text that ``xl create`` accepts and that
    :func:`parse_domain_config` reads back to an equal DomainConfig (the uuid
    lowercased): the inverse of the parser, so a config domsnap changed (after an
    external snapshot or a revert) can be handed back to xl.

    ``type`` is always written (xl's default differs from DomainConfig's); ``extra``
    is written as ``cmdline``, or as ``extra`` when ``other`` has ``root`` (xl
    ignores ``root`` next to ``cmdline``). Values xl.cfg cannot represent (control
    characters, a newline in a disk spec, a disk without target that is no cdrom,
    bools, negative numbers, nested lists, keys xl cannot read or that shadow a
    modelled key) raise InvalidInput naming the field; nothing is silently changed.
    """
    lines = [f"name = {_quote(cfg.name, 'name')}"]
    if cfg.uuid is not None:
        lines.append(f"uuid = {_quote(cfg.uuid.lower(), 'uuid')}")
    lines += [f'type = "{cfg.type}"', f"memory = {cfg.memory}", f"vcpus = {cfg.vcpus}"]
    if cfg.kernel is not None:
        lines.append(f"kernel = {_quote(cfg.kernel, 'kernel')}")
    if cfg.ramdisk is not None:
        lines.append(f"ramdisk = {_quote(cfg.ramdisk, 'ramdisk')}")
    if cfg.extra is not None:
        key = "extra" if "root" in cfg.other else "cmdline"
        lines.append(f"{key} = {_quote(cfg.extra, 'extra')}")
    if cfg.disks:
        specs = [_disk_entry(i, d) for i, d in enumerate(cfg.disks)]
        lines.append(f"disk = {_render(specs, 'disks')}")
    for key, value in cfg.other.items():
        field = f"other.{key}"
        if key in _MODELED_KEYS or not _XL_KEY_RE.match(key):
            why = "shadows a modelled key" if key in _MODELED_KEYS else "is not an xl.cfg key"
            raise InvalidInput(f"{field}: {key!r} {why}", field=field)
        lines.append(f"{key} = {_render(value, field)}")
    text = "\n".join(lines) + "\n"
    _check_round_trip(cfg, text)
    return text


def _check_round_trip(cfg: DomainConfig, text: str) -> None:
    """Parse ``text`` back; InvalidInput naming the first field that differs."""
    try:
        back = parse_domain_config(text)
    except ConfigFileError as exc:
        raise InvalidInput(f"{exc.key or 'config'}: cannot be written as xl.cfg: {exc.reason}",
                           field=exc.key) from None
    want = cfg.model_copy(update={"uuid": cfg.uuid.lower() if cfg.uuid else None})
    if back != want:
        changed = next(f for f in DomainConfig.model_fields if getattr(back, f) != getattr(want, f))
        raise InvalidInput(f"{changed}: does not survive being written as xl.cfg",
                           field=changed)
