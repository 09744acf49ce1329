"""Unit tests for domsnap.xlcfg: xl.cfg syntax, disk specs, domain and snapshot configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from domsnap.errors import ConfigFileError, InvalidInput
from domsnap.xlcfg import (
    load_domain_config,
    load_snapshot_config,
    parse_disk_spec,
    parse_domain_config,
    parse_snapshot_config,
    parse_xl,
)
from schemas.config import DiskSpec, SnapshotDiskChoice

# The two complete config examples of the libxl Domain Snapshot HOWTO, verbatim.
HOWTO_EXTERNAL = """\
name = "1397207577"
description="Snapshot after OS installation. External snapshot"
"""

HOWTO_DISK_ONLY = """\
name = "1397207577"
description="Snapshot after OS installation. External disk-only\\
             snapsot. Only care about the root file system"
"""


def config_error(text: str, parse: object = parse_snapshot_config) -> ConfigFileError:
    assert callable(parse)
    with pytest.raises(ConfigFileError) as info:
        parse(text, path="/etc/x.cfg")
    return info.value


# ------------------------------------------------------------------ xl.cfg syntax


def test_parse_xl_values() -> None:
    text = """
# a comment
a = "double"   # trailing comment
b = 'single # not a comment'
c = 42
d = 0x1F
e = [ "x", 2, 'y', ]
f.g_h = ""
"""
    assert parse_xl(text) == {
        "a": "double",
        "b": "single # not a comment",
        "c": 42,
        "d": 31,
        "e": ["x", 2, "y"],
        "f.g_h": "",
    }


def test_parse_xl_multiline_list_with_comments() -> None:
    text = 'disk = [\n  "a",  # first\n\n  "b",\n]\nx = 1\n'
    assert parse_xl(text) == {"disk": ["a", "b"], "x": 1}


def test_parse_xl_empty_list_semicolons_and_indentation() -> None:
    assert parse_xl("  a = [];  b = 1\n\t c = 'z'") == {"a": [], "b": 1, "c": "z"}


def test_parse_xl_empty_text() -> None:
    assert parse_xl("") == {}
    assert parse_xl("\n# only a comment\n\n") == {}


def test_backslash_continuation_joins_with_one_space() -> None:
    text = "d = \"one\\\n      two\\\n\tthree\"\ne = 'x\\\n y'\nf = 1\n"
    assert parse_xl(text) == {"d": "one two three", "e": "x y", "f": 1}
    # blanks between the backslash and the newline are absorbed too
    assert parse_xl('d = "a\\  \n  b"') == {"d": "a b"}


def test_double_quote_escapes() -> None:
    assert parse_xl(r'a = "q\"uo\\te\nx"') == {"a": 'q"uo\\te\nx'}
    assert parse_xl(r"a = 'back\slash'") == {"a": "back\\slash"}


def test_crlf_line_endings() -> None:
    assert parse_xl('a = "x"\r\nb = [\r\n "y",\r\n]\r\n') == {"a": "x", "b": ["y"]}


def test_duplicate_key_is_an_error() -> None:
    err = config_error('name = "a"\n\nname = "b"\n', parse_xl)
    assert (err.line, err.key) == (3, "name")
    assert "duplicate key (first set on line 1)" in err.reason
    assert str(err).startswith("/etc/x.cfg:3: name: duplicate key")


def test_unterminated_string_names_line_and_key() -> None:
    err = config_error('name = "a"\n\ndescription = "no end\nx = 1\n', parse_xl)
    assert (err.line, err.key, err.reason) == (3, "description", "unterminated string")
    assert str(err) == "/etc/x.cfg:3: description: unterminated string"


def test_unterminated_string_at_end_of_file() -> None:
    err = config_error("a = 1\nb = 'open", parse_xl)
    assert (err.line, err.key, err.reason) == (2, "b", "unterminated string")


def test_unterminated_list_at_end_of_file() -> None:
    err = config_error('a = 1\ndisk = [ "x",\n  "y"\n', parse_xl)
    assert (err.line, err.key) == (2, "disk")
    assert "unterminated list" in err.reason


def test_unterminated_list_before_next_key() -> None:
    err = config_error('disk = [ "x",\nname = "y"\n', parse_xl)
    assert (err.line, err.key) == (1, "disk")
    assert "unterminated list" in err.reason


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ('a = 1\nname "x"\n', 2, "name", "missing '='"),
        ("a = 1\nlonely\n", 2, "lonely", "missing '='"),
        ("\n1abc = 2\n", 2, None, "bad key '1abc'"),
        ("foo-bar = 2\n", 1, None, "bad key 'foo-bar'"),
        ('"x" = 2\n', 1, None, "expected a key"),
        ("memory = yes\n", 1, "memory", "unknown bare word value 'yes'"),
        ("a = 1.5\n", 1, "a", "unknown bare word value '1.5'"),
        ("a = [ 1, [2] ]\n", 1, "a", "nested lists"),
        ("a = [ 1 2 ]\n", 1, "a", "expected ',' or ']'"),
        ("a =\n", 1, "a", "expected a value"),
        ('a = "x" "y"\n', 1, "a", "after the value"),
    ],
)
def test_syntax_errors(text: str, line: int, key: str | None, reason: str) -> None:
    err = config_error(text, parse_xl)
    assert (err.line, err.key) == (line, key)
    assert reason in err.reason


# ------------------------------------------------------------------ disk specs


def test_disk_spec_positional() -> None:
    assert parse_disk_spec("/img/a.qcow2,qcow2,xvda,rw") == DiskSpec(
        vdev="xvda", target="/img/a.qcow2", format="qcow2", access="rw"
    )


def test_disk_spec_keyword_target_takes_rest_with_commas() -> None:
    spec = parse_disk_spec("vdev=xvdb, format=qcow2, access=ro, backendtype=qdisk, target=/a,b c")
    assert spec == DiskSpec(
        vdev="xvdb", target="/a,b c", format="qcow2", access="ro", backendtype="qdisk"
    )
    assert parse_disk_spec(spec.to_spec()) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("phy:/dev/vg/lv,xvda,w", DiskSpec(vdev="xvda", target="/dev/vg/lv", backendtype="phy")),
        ("file:/x.img,hda,w", DiskSpec(vdev="hda", target="/x.img")),
        (
            "tap:qcow2:/x.qcow2,xvdb,r",
            DiskSpec(vdev="xvdb", target="/x.qcow2", format="qcow2", access="ro"),
        ),
        ("qcow2:/x.qcow2,xvdc,rw", DiskSpec(vdev="xvdc", target="/x.qcow2", format="qcow2")),
        ("tap:aio:/x.img,xvdd,ro", DiskSpec(vdev="xvdd", target="/x.img", access="ro")),
    ],
)
def test_disk_spec_legacy_prefixes(text: str, expected: DiskSpec) -> None:
    assert parse_disk_spec(text) == expected


def test_disk_spec_cdrom_forms() -> None:
    empty = parse_disk_spec(",,hdc:cdrom,r")
    assert empty == DiskSpec(vdev="hdc", target=None, access="ro", devtype="cdrom")
    assert not empty.writable
    assert parse_disk_spec("/iso/a.iso,raw,hdc,ro,cdrom").devtype == "cdrom"
    assert parse_disk_spec("vdev=hdd, devtype=cdrom, target=/i.iso").devtype == "cdrom"


def test_disk_spec_mixed_positional_then_keyword_and_defaults() -> None:
    assert parse_disk_spec("/img/b.raw, , xvdb, backendtype=phy,") == DiskSpec(
        vdev="xvdb", target="/img/b.raw", format="raw", access="rw", backendtype="phy"
    )
    assert parse_disk_spec("format=qcow2, /img/c.qcow2, xvdc") == DiskSpec(
        vdev="xvdc", target="/img/c.qcow2", format="qcow2"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("/img/a.vmdk,vmdk,xvda,rw", "unknown format 'vmdk'"),
        ("/img/a,raw,xvda,rw,extra", "too many positional"),
        ("/img/a,raw,xvda,rwx", "bad access 'rwx'"),
        ("/img/a,raw", "no vdev"),
        ("/img/a,raw,hdc:floppy", "unknown vdev suffix ':floppy'"),
        ("vdev=xvda, devtype=tape", "bad devtype 'tape'"),
        ("vdev=xvda, backendtype=nbd", "unknown backendtype 'nbd'"),
        ("vdev=hdc:cdrom, devtype=disk", "conflicts with devtype=disk"),
        ("vdev=xvda, script=block-iscsi", "unknown parameter 'script'"),
        ("vdev=xvda, vdev=xvdb", "vdev given twice"),
        ("  ", "empty disk spec"),
    ],
)
def test_disk_spec_errors(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_disk_spec(text, field="disks[1]")
    assert info.value.field == "disks[1]"
    assert reason in info.value.message


# ------------------------------------------------------------------ domain configs

DOMAIN = """\
name = "web01"
uuid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
type = "pvh"
memory = 1024
vcpus = 2
kernel = "/boot/vmlinuz"
ramdisk = "/boot/initrd.img"
extra = "root=/dev/xvda1 console=hvc0"
disk = [ '/img/web01.qcow2,qcow2,xvda,rw',
         'phy:/dev/vg/data,xvdb,w',
         "vdev=xvdc, format=raw, access=ro, target=/img/ro,data.img" ]
vif = [ 'bridge=xenbr0' ]
on_crash = "restart"
maxmem = 2048
"""


def test_domain_config_full() -> None:
    cfg = parse_domain_config(DOMAIN)
    assert cfg.name == "web01"
    assert cfg.uuid == "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    assert (cfg.type, cfg.memory, cfg.vcpus) == ("pvh", 1024, 2)
    assert (cfg.kernel, cfg.ramdisk) == ("/boot/vmlinuz", "/boot/initrd.img")
    assert cfg.extra == "root=/dev/xvda1 console=hvc0"
    assert cfg.disks == [
        DiskSpec(vdev="xvda", target="/img/web01.qcow2", format="qcow2"),
        DiskSpec(vdev="xvdb", target="/dev/vg/data", backendtype="phy"),
        DiskSpec(vdev="xvdc", target="/img/ro,data.img", access="ro"),
    ]
    assert cfg.other == {"vif": ["bridge=xenbr0"], "on_crash": "restart", "maxmem": 2048}


def test_domain_config_legacy_builder_cmdline_and_defaults() -> None:
    cfg = parse_domain_config('name = "w"\nbuilder = "hvm"\ncmdline = "quiet"\n')
    assert (cfg.type, cfg.extra, cfg.disks, cfg.other) == ("hvm", "quiet", [], {})
    assert parse_domain_config('name = "w"').memory == 128
    assert parse_domain_config('name = "w"\nbuilder = "generic"').type == "pv"
    assert parse_domain_config('name = "w"\ntype = "hvm"\nbuilder = "hvm"').type == "hvm"


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ("memory = 512\n", None, "name", "missing required key"),
        ('name = "a/b"\n', 1, "name", "invalid domain name 'a/b'"),
        ('name = ".."\n', 1, "name", "invalid domain name '..'"),
        ('name = "a"\nuuid = "not-a-uuid"\n', 2, "uuid", "invalid UUID 'not-a-uuid'"),
        ('name = "a"\ntype = "kvm"\n', 2, "type", "unknown domain type 'kvm'"),
        ('name = "a"\nmemory = "512"\n', 2, "memory", "must be an integer"),
        ('name = "a"\nmemory = 8\n', 2, "memory", "invalid value"),
        ('name = "a"\nkernel = 3\n', 2, "kernel", "must be a quoted string"),
        ('name = "a"\nextra = "x"\ncmdline = "y"\n', 2, "extra", "conflicts with cmdline"),
        ('name = "a"\ntype = "pv"\nbuilder = "hvm"\n', 2, "type", "conflicts with builder"),
        ('name = "a"\ndisk = "/x,raw,xvda"\n', 2, "disk", "must be a list"),
        (
            'name = "a"\n\ndisk = [ "/x,raw,xvda", "/y,vmdk,xvdb" ]\n',
            3,
            "disk",
            "entry 1 '/y,vmdk,xvdb': unknown format 'vmdk'",
        ),
    ],
)
def test_domain_config_errors(text: str, line: int | None, key: str, reason: str) -> None:
    err = config_error(text, parse_domain_config)
    assert (err.line, err.key) == (line, key)
    assert reason in err.reason


# ------------------------------------------------------------------ snapshot configs


def test_howto_external_example() -> None:
    cfg = parse_snapshot_config(HOWTO_EXTERNAL)
    assert cfg.name == "1397207577"
    assert cfg.description == "Snapshot after OS installation. External snapshot"
    assert (cfg.memory, cfg.type, cfg.disks) == (True, "internal", None)


def test_howto_disk_only_example_continuation() -> None:
    cfg = parse_snapshot_config(HOWTO_DISK_ONLY)
    assert cfg.name == "1397207577"
    assert cfg.description == (
        "Snapshot after OS installation. External disk-only snapsot. "
        "Only care about the root file system"
    )


def test_howto_examples_as_indented_in_the_howto() -> None:
    indented = "".join("            " + line + "\n" for line in HOWTO_DISK_ONLY.splitlines())
    assert parse_snapshot_config(indented) == parse_snapshot_config(HOWTO_DISK_ONLY)


def test_full_external_snapshot_config() -> None:
    text = """\
name = "pre-upgrade:2024.06"
description = "before the upgrade"
memory = "/var/lib/domsnap/web01/pre-upgrade.save"
type = "external"
creationtime = 1397207577
disk = [ "vdev=xvda, target=/snap/xvda.qcow2",
         "vdev=xvdb, format=qcow2, target=/snap/b,1.qcow2",
         "xvdc, type=internal" ]
"""
    cfg = parse_snapshot_config(text)
    assert cfg.name == "pre-upgrade:2024.06"
    assert cfg.memory == "/var/lib/domsnap/web01/pre-upgrade.save"
    assert cfg.type == "external"
    assert cfg.disks == [
        SnapshotDiskChoice(vdev="xvda", type="external", format="qcow2", target="/snap/xvda.qcow2"),
        SnapshotDiskChoice(vdev="xvdb", type="external", format="qcow2", target="/snap/b,1.qcow2"),
        SnapshotDiskChoice(vdev="xvdc", type="internal"),
    ]


def test_internal_snapshot_disks_and_memory_no() -> None:
    cfg = parse_snapshot_config('memory = "no"\ndisk = [ "vdev=xvda", "xvdb", ]\n')
    assert cfg.memory is False
    assert cfg.disks == [SnapshotDiskChoice(vdev="xvda"), SnapshotDiskChoice(vdev="xvdb")]
    assert parse_snapshot_config('memory = "yes"').memory is True
    assert parse_snapshot_config("disk = []").disks == []


def test_snapshot_disk_type_inferred_external_from_target() -> None:
    cfg = parse_snapshot_config('disk = [ "vdev=xvda, target=/s/a.qcow2" ]')
    assert cfg.type == "internal"
    assert cfg.disks == [
        SnapshotDiskChoice(vdev="xvda", type="external", format="qcow2", target="/s/a.qcow2")
    ]


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ('description = "x"\nname = "a/b"\n', 2, "name", "must not contain '/'"),
        ('name = ".."\n', 1, "name", "invalid snapshot name '..'"),
        ('name = "."\n', 1, "name", "invalid snapshot name '.'"),
        ('name = "' + "x" * 129 + '"\n', 1, "name", "invalid snapshot name"),
        ('name = "a"\nmemory = "snap/a.save"\n', 2, "memory", "absolute path"),
        ('memory = "maybe"\n', 1, "memory", "absolute path"),
        ('name = "a"\n\nvcpus = 2\n', 3, "vcpus", "unknown key"),
        ('type = "differential"\n', 1, "type", "unknown snapshot type"),
        (
            'type = "internal"\ndisk = [ "vdev=xvda, type=internal, target=/s/a" ]\n',
            2,
            "disk",
            "an internal snapshot disk cannot have a target",
        ),
        ('disk = [ "vdev=xvda, target=s/a.qcow2" ]\n', 1, "disk", "absolute target"),
        ('disk = [ "vdev=xvda, format=raw, target=/s/a" ]\n', 1, "disk", "must be qcow2, not raw"),
        ('disk = [ "vdev=xvda, format=vmdk" ]\n', 1, "disk", "unknown format 'vmdk'"),
        ('disk = [ "vdev=xvda, type=full" ]\n', 1, "disk", "unknown type 'full'"),
        ('disk = [ "vdev=xvda, mode=rw" ]\n', 1, "disk", "unknown parameter 'mode'"),
        ('disk = [ "xvda", "vdev=xvda" ]\n', 1, "disk", "listed twice"),
        ('disk = [ "xvda, xvdb" ]\n', 1, "disk", "unexpected value 'xvdb'"),
        ("disk = [ 1 ]\n", 1, "disk", "list of quoted strings"),
    ],
)
def test_snapshot_config_errors(text: str, line: int, key: str, reason: str) -> None:
    err = config_error(text)
    assert (err.line, err.key) == (line, key)
    assert reason in err.reason
    assert str(err).startswith(f"/etc/x.cfg:{line}: {key}: ")


# ------------------------------------------------------------------ files


def test_load_snapshot_and_domain_config(tmp_path: Path) -> None:
    snap = tmp_path / "snap.cfg"
    snap.write_text(HOWTO_DISK_ONLY, encoding="utf-8")
    assert load_snapshot_config(str(snap)).name == "1397207577"
    dom = tmp_path / "dom.cfg"
    dom.write_text(DOMAIN, encoding="utf-8")
    assert load_domain_config(str(dom)).name == "web01"


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.cfg")
    with pytest.raises(ConfigFileError) as info:
        load_snapshot_config(missing)
    assert info.value.details["path"] == missing
    assert str(info.value).startswith(missing + ": cannot read file")
    bad = tmp_path / "bad.cfg"
    bad.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigFileError, match="not UTF-8"):
        load_domain_config(str(bad))


def test_load_error_carries_path_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "s.cfg"
    cfg.write_text('name = "a"\nbogus = 1\n', encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        load_snapshot_config(str(cfg))
    assert str(info.value) == f"{cfg}:2: bogus: unknown key"


def test_external_disk_without_target_gets_the_hosts_default() -> None:
    cfg = parse_snapshot_config('type = "external"\ndisk = [ "vdev=xvda" ]\n')
    assert cfg.disks is not None
    assert cfg.disks[0].vdev == "xvda" and cfg.disks[0].target is None
    assert cfg.disks[0].format == "qcow2"
