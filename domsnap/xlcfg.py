"""Parsers for xl-style configuration: xl.cfg(5) domain configs, xl.snapshot.cfg
snapshot configs and xl-disk-configuration(5) disk specs.

Pure functions over text (only ``load_*`` touch the filesystem), so that a bad file
fails before anything is snapshotted, with an error naming the line, key and reason.
The writer, the inverse of :func:`parse_domain_config`, is :mod:`domsnap.xlcfg_write`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias, get_args

from pydantic import ValidationError

from domsnap.errors import ConfigFileError, InvalidInput
from domsnap.validation import reason as _pydantic_reason
from schemas.config import (
    DiskFormat,
    DiskSpec,
    DomainConfig,
    SnapshotConfig,
    SnapshotDiskChoice,
    SnapshotType,
)

XlValue: TypeAlias = str | int | list[str | int]

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_INT_RE = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]+)\Z")
_CONT_RE = re.compile(r"\\[ \t]*\r?\n[ \t]*")  # backslash-newline inside a quoted string
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}  # double-quoted strings only
_DOMAIN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}\Z")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")
_VDEV_RE = re.compile(r"[A-Za-z0-9_]+\Z")
_TARGET_RE = re.compile(r"\s*target\s*=")
_PREFIX_RE = re.compile(r"(phy|file|aio|ioemu|tap2?|tapdisk|raw|qcow2?|vhd):")

_FORMATS: dict[str, DiskFormat] = {f: f for f in get_args(DiskFormat)}
_ACCESS: dict[str, Literal["rw", "ro"]] = {"": "rw", "w": "rw", "rw": "rw", "r": "ro", "ro": "ro"}
_DEVTYPES: dict[str, Literal["disk", "cdrom"]] = {"disk": "disk", "cdrom": "cdrom"}
_BACKENDTYPES = frozenset({"phy", "qdisk", "tap", "standalone"})
_SNAP_TYPES: dict[str, SnapshotType] = {t: t for t in get_args(SnapshotType)}
_SNAPSHOT_KEYS = frozenset({"name", "description", "memory", "type", "disk", "creationtime"})


# --------------------------------------------------------------------------- xl.cfg syntax


@dataclass(frozen=True)
class _Tok:
    kind: str  # word | str | = | [ | ] | , | ; | nl | eof | error (text = reason)
    text: str
    line: int


def _read_string(text: str, i: int, line: int) -> tuple[_Tok, int, int]:
    """Read the quoted string at ``text[i]``; return (str or error token, end, line).

    A backslash ending a line continues the string: the backslash, the newline and the
    next line's leading blanks become one space (xl.snapshot.cfg examples rely on it).
    """
    quote, start, out = text[i], line, list[str]()
    i += 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return _Tok("str", "".join(out), start), i + 1, line
        if c == "\n":
            break
        if c == "\\":
            m = _CONT_RE.match(text, i)
            if m:
                out.append(" ")
                line, i = line + 1, m.end()
                continue
            nxt = text[i + 1 : i + 2]
            if quote == '"' and nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
        out.append(c)
        i += 1
    return _Tok("error", "unterminated string", start), i, line


def _tokens(text: str) -> list[_Tok]:
    """Split ``text`` into tokens. A lexical error becomes a final ``error`` token so
    that the parser can report it with the key it belongs to."""
    toks: list[_Tok] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            toks.append(_Tok("nl", c, line))
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "=[],;":
            toks.append(_Tok(c, c, line))
            i += 1
        elif c in "\"'":
            tok, i, line = _read_string(text, i, line)
            toks.append(tok)
            if tok.kind == "error":
                return toks
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "=[],;#\"'":
                j += 1
            toks.append(_Tok("word", text[i:j], line))
            i = j
    toks.append(_Tok("eof", "", line))
    return toks


def _short(value: object, limit: int = 60) -> str:
    """``value`` for an error message: quoted, and a long string cut to ``limit``
    characters (a 5 MB line must not become a 5 MB message)."""
    if not isinstance(value, str):
        return repr(value)[:limit]
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def _describe(tok: _Tok) -> str:
    names = {"str": "a string", "nl": "end of line", "eof": "end of file"}
    return names.get(tok.kind, _short(tok.text))


class _Parser:
    """Recursive-descent parser for ``KEY = VALUE`` settings (xl.cfg(5) syntax)."""

    def __init__(self, text: str, path: str | None) -> None:
        self.toks = _tokens(text)
        self.pos = 0
        self.path = path
        self.key: str | None = None

    def _err(self, reason: str, line: int | None) -> ConfigFileError:
        return ConfigFileError(reason, path=self.path, line=line, key=self.key)

    def _peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.pos + ahead, len(self.toks) - 1)]

    def _take(self) -> _Tok:
        tok = self._peek()
        if tok.kind == "error":
            raise self._err(tok.text, tok.line)
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def parse(self) -> tuple[dict[str, XlValue], dict[str, int]]:
        values: dict[str, XlValue] = {}
        lines: dict[str, int] = {}
        while True:
            self.key = None
            tok = self._take()
            if tok.kind in ("nl", ";"):
                continue
            if tok.kind == "eof":
                return values, lines
            if tok.kind != "word":
                raise self._err(f"expected a key, found {_describe(tok)}", tok.line)
            if not _KEY_RE.match(tok.text):
                raise self._err(
                    f"bad key {_short(tok.text)} (letters, digits, '_' and '.'; no leading digit)",
                    tok.line,
                )
            self.key = tok.text
            if tok.text in values:
                raise self._err(f"duplicate key (first set on line {lines[tok.text]})", tok.line)
            if self._take().kind != "=":
                raise self._err("missing '=' after the key", tok.line)
            values[tok.text] = self._value(tok.line)
            lines[tok.text] = tok.line
            end = self._take()
            if end.kind not in ("nl", ";", "eof"):
                raise self._err(f"unexpected {_describe(end)} after the value", end.line)

    def _value(self, key_line: int) -> XlValue:
        if self._peek().kind == "[":
            self._take()
            return self._list(key_line)
        return self._scalar()

    def _scalar(self) -> str | int:
        tok = self._take()
        if tok.kind == "str":
            return tok.text
        if tok.kind == "word" and _INT_RE.match(tok.text):
            hexa = tok.text[:2].lower() == "0x"
            digits = tok.text[2:] if hexa else tok.text
            if len(digits.lstrip("0")) > (16 if hexa else 20):
                raise self._err(f"number {_short(tok.text, 24)} is too long ({len(digits)} "
                                "digits): xl numbers are 64-bit", tok.line)
            return int(digits, 16) if hexa else int(digits)
        if tok.kind == "word":
            raise self._err(f"unknown bare word value {_short(tok.text)} (quote strings)", tok.line)
        if tok.kind == "[":
            raise self._err("nested lists are not supported", tok.line)
        raise self._err(f"expected a value, found {_describe(tok)}", tok.line)

    def _list(self, key_line: int) -> list[str | int]:
        items: list[str | int] = []
        while True:
            self._skip_newlines(key_line)
            if self._peek().kind == "]":
                self._take()
                return items
            items.append(self._scalar())
            self._skip_newlines(key_line)
            tok = self._take()
            if tok.kind == "]":
                return items
            if tok.kind != ",":
                raise self._err(f"expected ',' or ']' in list, found {_describe(tok)}", tok.line)

    def _skip_newlines(self, key_line: int) -> None:
        """Skip newlines inside a list; a list still open at end of file or at the next
        ``KEY =`` line is unterminated."""
        while self._peek().kind == "nl":
            self._take()
        tok = self._peek()
        if tok.kind in ("eof", ";") or (tok.kind == "word" and self._peek(1).kind == "="):
            raise self._err("unterminated list (missing ']')", key_line)


def _parse_with_lines(
    text: str, path: str | None = None
) -> tuple[dict[str, XlValue], dict[str, int]]:
    """Parse xl.cfg text into (values, key -> line number of the key)."""
    return _Parser(text, path).parse()


def parse_xl(text: str, *, path: str | None = None) -> dict[str, XlValue]:
    """Parse xl.cfg(5) syntax into ``{key: value}``; a duplicate key is an error."""
    return _parse_with_lines(text, path)[0]


# --------------------------------------------------------------------------- disk specs


def _split_spec(spec: str) -> list[tuple[str | None, str]]:
    """Split a comma-separated spec into (key or None for positional, value) pairs.
    ``target=`` takes the whole rest of the string, commas included."""
    out: list[tuple[str | None, str]] = []
    rest = spec
    while True:
        m = _TARGET_RE.match(rest)
        if m:
            out.append(("target", rest[m.end() :].strip()))
            return out
        head, comma, rest = rest.partition(",")
        key, eq, value = head.partition("=")
        out.append((key.strip(), value.strip()) if eq else (None, head.strip()))
        if not comma or not rest.strip():  # a trailing comma ends the spec
            return out


def _disk_spec(spec: str) -> DiskSpec:
    """Build a DiskSpec as xl does: positional values fill the first unset slot of
    target, format, vdev, access; a legacy target prefix (``phy:``) sets the format."""
    if not spec.strip():
        raise ValueError("empty disk spec")
    got: dict[str, str] = {}
    for key, value in _split_spec(spec):
        if key is None and value == "cdrom":
            key = "devtype"
        if key is None:
            slot = next((s for s in ("target", "format", "vdev", "access") if s not in got), None)
            if slot is None:
                raise ValueError(f"too many positional parameters at {_short(value)}")
            if slot == "target":
                value = _strip_prefixes(value, got)
            got[slot] = value
            continue
        if key not in ("target", "format", "vdev", "access", "devtype", "backendtype"):
            raise ValueError(f"unknown parameter {_short(key)}")
        if key in got:
            raise ValueError(f"{key} given twice")
        got[key] = value
    fmt = _FORMATS.get(got.get("format") or "raw")
    if fmt is None:
        raise ValueError(f"unknown format {_short(got['format'])}")
    access = _ACCESS.get(got.get("access", ""))
    if access is None:
        raise ValueError(f"bad access {_short(got['access'])} (r, ro, w or rw)")
    vdev, colon, suffix = got.get("vdev", "").partition(":")
    if colon and suffix != "cdrom":
        raise ValueError(f"unknown vdev suffix ':{suffix}'")
    if not _VDEV_RE.match(vdev):
        raise ValueError(f"bad or missing vdev {_short(vdev)}" if vdev else "no vdev")
    devtype = _DEVTYPES.get(got.get("devtype", "cdrom" if colon else "disk"))
    if devtype is None:
        raise ValueError(f"bad devtype {_short(got['devtype'])} (disk or cdrom)")
    if colon and devtype != "cdrom":
        raise ValueError("vdev suffix ':cdrom' conflicts with devtype=disk")
    backendtype = got.get("backendtype")
    if backendtype is not None and backendtype not in _BACKENDTYPES:
        raise ValueError(f"unknown backendtype {_short(backendtype)}")
    return DiskSpec(
        vdev=vdev,
        target=got.get("target") or None,
        format=fmt,
        access=access,
        devtype=devtype,
        backendtype=backendtype,
    )


def _strip_prefixes(target: str, got: dict[str, str]) -> str:
    """Strip legacy ``phy:``/``file:``/``tap:qcow2:``-style prefixes off a positional
    target, recording the format (raw unless a format prefix says otherwise) and, for
    ``phy:``, the backendtype. As in xl, a prefix means no positional format follows."""
    fmt: str | None = None
    while m := _PREFIX_RE.match(target):
        name, target = m.group(1), target[m.end() :]
        if name in _FORMATS:
            fmt = name
        elif name == "phy":
            got["backendtype"] = "phy"
        got.setdefault("format", "raw")
    if fmt is not None:
        got["format"] = fmt
    return target


def parse_disk_spec(spec: str, *, field: str = "disk") -> DiskSpec:
    """Parse one xl-disk-configuration(5) spec, positional, keyword or mixed.

    Raises InvalidInput naming ``field`` when the spec is invalid.
    """
    try:
        return _disk_spec(spec)
    except ValueError as exc:
        raise InvalidInput(f"bad disk spec {_short(spec)}: {exc}", field=field) from None


# --------------------------------------------------------------------------- typed access


class _Doc:
    """Parsed values plus their lines, with typed getters whose errors name key and line."""

    def __init__(self, text: str, path: str | None) -> None:
        self.values, self.lines = _parse_with_lines(text, path)
        self.path = path

    def err(self, key: str, reason: str) -> ConfigFileError:
        return ConfigFileError(reason, path=self.path, line=self.lines.get(key), key=key)

    def str_(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is not None and not isinstance(value, str):
            raise self.err(key, "must be a quoted string")
        return value

    def int_(self, key: str) -> int | None:
        value = self.values.get(key)
        if value is not None and not isinstance(value, int):
            raise self.err(key, "must be an integer")
        return value

    def strings(self, key: str) -> list[str] | None:
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.err(key, "must be a list of quoted strings")
        return [str(v) for v in value]

    def alias(self, key: str, old: str) -> str | None:
        """A string key with a legacy alias; if both are given they must agree."""
        new_value, old_value = self.str_(key), self.str_(old)
        if new_value is not None and old_value is not None and new_value != old_value:
            raise self.err(key, f"conflicts with {old} on line {self.lines[old]}")
        return new_value if new_value is not None else old_value


# --------------------------------------------------------------------------- domain configs


def parse_domain_config(text: str, *, path: str | None = None) -> DomainConfig:
    """Parse an xl.cfg(5) domain config into the DomainConfig that domsnap needs;
    keys it does not model are kept verbatim in ``other``."""
    doc = _Doc(text, path)
    name = doc.str_("name")
    if name is None:
        raise ConfigFileError("missing required key", path=path, key="name")
    if not _DOMAIN_NAME_RE.match(name) or name in (".", ".."):
        raise doc.err("name", f"invalid domain name {_short(name)} (1-64 of A-Z a-z 0-9 _ . -)")
    fields: dict[str, object] = {"name": name}
    uuid = doc.str_("uuid")
    if uuid is not None:
        if not _UUID_RE.match(uuid):
            raise doc.err("uuid", f"invalid UUID {_short(uuid)}")
        fields["uuid"] = uuid.lower()
    builder = doc.str_("builder")
    if builder is not None and builder not in ("hvm", "generic"):
        raise doc.err("builder", f"unknown builder {_short(builder)} (hvm or generic)")
    dtype = doc.str_("type")
    if dtype is not None and dtype not in ("pv", "pvh", "hvm"):
        raise doc.err("type", f"unknown domain type {_short(dtype)} (pv, pvh or hvm)")
    legacy = {"hvm": "hvm", "generic": "pv", None: None}[builder]
    if dtype is not None and legacy is not None and dtype != legacy:
        raise doc.err("type", f"conflicts with builder on line {doc.lines['builder']}")
    if dtype or legacy:
        fields["type"] = dtype or legacy
    for key in ("memory", "vcpus"):
        if (number := doc.int_(key)) is not None:
            fields[key] = number
    for key in ("kernel", "ramdisk"):
        if (string := doc.str_(key)) is not None:
            fields[key] = string
    if (extra := doc.alias("extra", "cmdline")) is not None:
        fields["extra"] = extra
    disks: list[DiskSpec] = []
    for i, spec in enumerate(doc.strings("disk") or []):
        try:
            disks.append(_disk_spec(spec))
        except ValueError as exc:
            raise doc.err("disk", f"entry {i} {_short(spec)}: {exc}") from None
    fields["disks"] = disks
    known = {"name", "uuid", "builder", "type", "memory", "vcpus", "kernel", "ramdisk"}
    known |= {"extra", "cmdline", "disk"}
    fields["other"] = {k: v for k, v in doc.values.items() if k not in known}
    try:
        return DomainConfig.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "name"
        key = {"disks": "disk"}.get(field, field)
        raise doc.err(key, f"invalid value: {_pydantic_reason(first)}") from None


# --------------------------------------------------------------------------- snapshot configs


def _snapshot_disk(entry: str, file_type: SnapshotType) -> SnapshotDiskChoice:
    """One ``disk=[...]`` entry of xl.snapshot.cfg: ``vdev=xvda`` (or a bare ``xvda``
    first) plus optional ``type=``, ``format=`` and ``target=`` (last)."""
    got: dict[str, str] = {}
    for i, (key, value) in enumerate(_split_spec(entry)):
        if key is None and i > 0:
            raise ValueError(f"unexpected value {_short(value)} "
                             "(use vdev=, type=, format=, target=)")
        key = key or "vdev"
        if key not in ("vdev", "type", "format", "target"):
            raise ValueError(f"unknown parameter {_short(key)}")
        if key in got:
            raise ValueError(f"{key} given twice")
        got[key] = value
    vdev = got.get("vdev", "")
    if not _VDEV_RE.match(vdev):
        raise ValueError(f"bad vdev {_short(vdev)}" if vdev else "no vdev")
    snap_type = _SNAP_TYPES.get(got["type"]) if "type" in got else None
    if "type" in got and snap_type is None:
        raise ValueError(f"unknown type {_short(got['type'])} (internal or external)")
    target = got.get("target") or None
    if snap_type is None and target is not None:
        snap_type = "external"
    fmt = _FORMATS.get(got["format"]) if "format" in got else None
    if "format" in got and fmt is None:
        raise ValueError(f"unknown format {_short(got['format'])}")
    if (snap_type or file_type) == "internal":
        if target is not None:
            raise ValueError("an internal snapshot disk cannot have a target")
        if fmt not in (None, "qcow2"):
            raise ValueError(f"internal snapshots need qcow2, not {fmt}")
    else:
        if fmt not in (None, "qcow2"):
            raise ValueError(f"an external snapshot overlay must be qcow2, not {fmt}")
        fmt = "qcow2"
        # no target: the host puts the overlay in its snapshot dir
        if target is not None and not target.startswith("/"):
            raise ValueError("an external snapshot disk needs an absolute target path")
    return SnapshotDiskChoice(vdev=vdev, type=snap_type, format=fmt, target=target)


def parse_snapshot_config(text: str, *, path: str | None = None) -> SnapshotConfig:
    """Parse an xl.snapshot.cfg: name, description, memory, type, disk (creationtime is
    accepted and ignored); any other key is an error."""
    doc = _Doc(text, path)
    for key in doc.values:
        if key not in _SNAPSHOT_KEYS:
            raise doc.err(key, "unknown key")
    config = SnapshotConfig()
    name = doc.str_("name")
    if name is not None:
        if "/" in name:
            raise doc.err("name", f"invalid snapshot name {_short(name)}: must not contain '/'")
        if not _SNAPSHOT_NAME_RE.match(name) or name in (".", ".."):
            raise doc.err("name", f"invalid snapshot name {_short(name)} "
                          "(1-128 of A-Z a-z 0-9 _ . : -)")
        config.name = name
    config.description = doc.str_("description")
    memory = doc.str_("memory")
    if memory is not None:
        if memory not in ("yes", "no") and not memory.startswith("/"):
            raise doc.err("memory",
                          f'must be "yes", "no" or an absolute path, not {_short(memory)}')
        config.memory = {"yes": True, "no": False}.get(memory, memory)
    snap_type = doc.str_("type")
    if snap_type is not None:
        if snap_type not in _SNAP_TYPES:
            raise doc.err("type", f"unknown snapshot type {_short(snap_type)} "
                          "(internal or external)")
        config.type = _SNAP_TYPES[snap_type]
    entries = doc.strings("disk")
    if entries is not None:
        config.disks = []
        for i, entry in enumerate(entries):
            try:
                choice = _snapshot_disk(entry, config.type)
            except ValueError as exc:
                raise doc.err("disk", f"entry {i} {_short(entry)}: {exc}") from None
            if any(d.vdev == choice.vdev for d in config.disks):
                raise doc.err("disk", f"entry {i}: vdev {_short(choice.vdev)} listed twice")
            config.disks.append(choice)
    return config


# --------------------------------------------------------------------------- files


MAX_CONFIG_BYTES = 1 << 20  # an xl config is a few lines; more is not a config file


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"larger than {MAX_CONFIG_BYTES} characters: not a config "
                                  "file", path=path)
        return text
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"not UTF-8 text (byte {exc.start})", path=path) from None
    except OSError as exc:
        raise ConfigFileError(f"cannot read file: {exc.strerror or exc}", path=path) from None


def load_snapshot_config(path: str) -> SnapshotConfig:
    """Read and parse an xl.snapshot.cfg file (UTF-8)."""
    return parse_snapshot_config(_read(path), path=path)


def load_domain_config(path: str) -> DomainConfig:
    """Read and parse an xl.cfg domain config file (UTF-8)."""
    return parse_domain_config(_read(path), path=path)
