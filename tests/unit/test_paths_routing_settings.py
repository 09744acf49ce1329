"""Path confinement to the snapshot roots, queue routing, and settings from env/TOML."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from domsnap.errors import InvalidInput
from domsnap.settings import Settings, get_settings, reset_settings
from workers import routing
from workers.hostio.paths import confined

# ---------------------------------------------------------------- paths


@pytest.fixture
def roots(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "snaps", tmp_path / "extra"
    a.mkdir()
    b.mkdir()
    (tmp_path / "outside").mkdir()
    return [a, b]


def _refused(path: str, roots: list[Path], **kw: bool) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        confined(path, roots, field="memory_file", **kw)
    assert info.value.field == "memory_file"
    assert str(info.value).startswith("memory_file: ")
    return info.value


def test_confined_ok_returns_resolved_path(roots: list[Path]) -> None:
    assert confined(str(roots[0] / "s1.save"), roots, field="f") == roots[0] / "s1.save"
    assert confined(str(roots[1] / "d" / "x.qcow2"), roots, field="f") == roots[1] / "d/x.qcow2"
    # a harmless '..' that stays inside is resolved, not kept
    inside = f"{roots[0]}/sub/../s2.save"
    assert confined(inside, roots, field="f") == roots[0] / "s2.save"


def test_confined_resolves_symlinked_root(tmp_path: Path, roots: list[Path]) -> None:
    link_root = tmp_path / "link-to-snaps"
    link_root.symlink_to(roots[0])
    got = confined(str(link_root / "s1.save"), [link_root], field="f")
    assert got == roots[0].resolve() / "s1.save"


def test_confined_relative_path(roots: list[Path]) -> None:
    err = _refused("snaps/s1.save", roots)
    assert "not an absolute path" in str(err)
    _refused("s1.save", roots)
    _refused("", roots)


def test_confined_outside_roots(tmp_path: Path, roots: list[Path]) -> None:
    err = _refused(str(tmp_path / "outside" / "s1.save"), roots)
    assert "outside the snapshot roots" in str(err)
    assert str(roots[0]) in str(err)
    _refused("/etc/passwd-new", roots)
    # a sibling whose name merely starts with a root's name is not under it
    _refused(str(roots[0]) + "-evil/s1.save", roots)


def test_confined_dotdot_escape(roots: list[Path]) -> None:
    err = _refused(f"{roots[0]}/../etc/passwd", roots)
    assert "outside the snapshot roots" in str(err)
    _refused(f"{roots[0]}/../outside/x.save", roots)
    _refused(f"{roots[0]}/a/../../../../../etc/shadow", roots)


def test_confined_symlink_escape(tmp_path: Path, roots: list[Path]) -> None:
    (roots[0] / "escape").symlink_to(tmp_path / "outside")
    err = _refused(str(roots[0] / "escape" / "mem.save"), roots)
    assert "outside the snapshot roots" in str(err)
    # a symlinked file name inside the root, pointing outside (dangling target)
    (roots[0] / "evil.save").symlink_to(tmp_path / "outside" / "new.save")
    _refused(str(roots[0] / "evil.save"), roots, must_not_exist=False)
    assert not (tmp_path / "outside" / "new.save").exists()


def test_confined_existing_file_refused(roots: list[Path]) -> None:
    target = roots[0] / "s1.save"
    target.write_text("ram")
    err = _refused(str(target), roots)
    assert "exists already" in str(err)
    assert confined(str(target), roots, field="f", must_not_exist=False) == target
    # a dangling symlink inside a root counts as existing too
    (roots[0] / "dangling").symlink_to(roots[0] / "nothing-here")
    _refused(str(roots[0] / "dangling"), roots)


@pytest.mark.parametrize("bad", ["a,b.save", "x.qcow2,format=raw", "a\x00b"])
def test_confined_forbidden_characters(roots: list[Path], bad: str) -> None:
    err = _refused(str(roots[0] / bad), roots)
    assert "forbidden character" in str(err)


def test_confined_no_roots(roots: list[Path]) -> None:
    _refused(str(roots[0] / "s1.save"), [])


# ---------------------------------------------------------------- routing


def test_queue_names() -> None:
    assert routing.host_queue("dom0-a") == "domsnap.host.dom0-a"
    assert routing.inflight_queue("dom0-a") == "domsnap.host.dom0-a.inflight"
    assert routing.host_queue("h1.example.org") == "domsnap.host.h1.example.org"
    assert routing.host_queue("a" * 253) == "domsnap.host." + "a" * 253
    assert routing.host_queue("h1") != routing.inflight_queue("h1")


def test_entry_task_names() -> None:
    assert routing.ENTRY_TASKS == {"create": "domsnap.create", "revert": "domsnap.revert",
                                   "delete": "domsnap.delete"}


@pytest.mark.parametrize("host", ["", "a b", "a/b", "h*", "h1\n", "a" * 254, "h:1", "h#",
                                  "dom0;rm", "hôte"])
def test_invalid_host_names_rejected(host: str) -> None:
    for fn in (routing.check_host, routing.host_queue, routing.inflight_queue):
        with pytest.raises(InvalidInput) as info:
            fn(host)
        assert info.value.field == "host"
        assert repr(host) in str(info.value)


# ---------------------------------------------------------------- settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("DOMSNAP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DOMSNAP_STATE_DIR", str(tmp_path / "state"))
    return monkeypatch


def test_snapshot_roots_colon_list(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("DOMSNAP_SNAPSHOT_ROOTS", "/srv/snap-a:/srv/snap-b::/mnt/c")
    s = Settings()
    assert s.snapshot_roots == [Path("/srv/snap-a"), Path("/srv/snap-b"), Path("/mnt/c")]
    assert s.allowed_roots == [tmp_path / "state" / "snapshots", *s.snapshot_roots]


def test_qemu_accel_comma_list(env: pytest.MonkeyPatch) -> None:
    env.setenv("DOMSNAP_QEMU_ACCEL", "kvm,tcg")
    assert Settings().qemu_accel == ["kvm", "tcg"]


def test_broker_defaults_to_redis_url(env: pytest.MonkeyPatch) -> None:
    env.setenv("DOMSNAP_REDIS_URL", "redis://r.example:6380/2")
    s = Settings()
    assert s.broker_url == "redis://r.example:6380/2"
    assert s.result_backend_url == "redis://r.example:6380/2"
    env.setenv("DOMSNAP_BROKER_URL", "redis://broker:6379/0")
    s = Settings()
    assert s.broker_url == "redis://broker:6379/0"
    assert s.result_backend_url == "redis://r.example:6380/2"


def test_defaults(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.broker_url == s.redis_url
    assert s.driver == "qemu"
    assert s.snapshot_roots == []
    assert s.state_dir == tmp_path / "state"


def test_snapshots_default_and_override(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().snapshots == tmp_path / "state" / "snapshots"
    env.setenv("DOMSNAP_SNAPSHOT_DIR", str(tmp_path / "elsewhere"))
    s = Settings()
    assert s.snapshots == tmp_path / "elsewhere"
    assert s.allowed_roots[0] == tmp_path / "elsewhere"


def test_toml_config_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "domsnap.toml"
    cfg.write_text(
        'redis_url = "redis://:secret@central:6379/1"\n'
        'host = "dom0-7"\n'
        'driver = "xl"\n'
        'snapshot_roots = ["/srv/a", "/srv/b"]\n'
        "lock_ttl_s = 120\n"
    )
    env.setenv("DOMSNAP_CONFIG", str(cfg))
    s = Settings()
    assert s.redis_url == "redis://:secret@central:6379/1"
    assert s.broker_url == s.redis_url
    assert (s.host, s.driver, s.lock_ttl_s) == ("dom0-7", "xl", 120)
    assert s.snapshot_roots == [Path("/srv/a"), Path("/srv/b")]
    # the environment wins over the file
    env.setenv("DOMSNAP_HOST", "dom0-8")
    env.setenv("DOMSNAP_LOCK_TTL_S", "30")
    s = Settings()
    assert (s.host, s.lock_ttl_s, s.driver) == ("dom0-8", 30, "xl")


def test_invalid_values_rejected(env: pytest.MonkeyPatch) -> None:
    env.setenv("DOMSNAP_DRIVER", "vmware")
    with pytest.raises(ValidationError, match="driver"):
        Settings()
    env.setenv("DOMSNAP_DRIVER", "qemu")
    env.setenv("DOMSNAP_LOCK_TTL_S", "an hour")
    with pytest.raises(ValidationError, match="lock_ttl_s"):
        Settings()


def test_get_settings_is_cached_until_reset(env: pytest.MonkeyPatch) -> None:
    reset_settings()
    try:
        env.setenv("DOMSNAP_HOST", "first")
        assert get_settings().host == "first"
        env.setenv("DOMSNAP_HOST", "second")
        assert get_settings().host == "first"
        reset_settings()
        assert get_settings().host == "second"
    finally:
        reset_settings()


def test_driver_is_xl_where_xl_is_on_path(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A dom0 is recognised by its xl binary; files then go where the libxl snapshot
    RFC put them, unless configured."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    xl = bindir / "xl"
    xl.write_text("#!/bin/sh\nexit 0\n")
    xl.chmod(0o755)
    env.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    s = Settings()
    assert s.driver == "xl"
    assert s.snapshots == Path("/var/lib/xen/snapshots")
    assert s.xen_run_dir == Path("/var/run/xen")
    env.setenv("DOMSNAP_DRIVER", "qemu")  # an explicit choice wins
    assert Settings().driver == "qemu"
    env.delenv("DOMSNAP_DRIVER")
    env.setenv("DOMSNAP_XL_BINARY", "no-such-xl")
    assert Settings().driver == "qemu"


def test_null_driver_only_when_asked_for_and_it_warns(
        env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The null driver (benchmarks only) is never auto-detected: with no xl on PATH the
    default is qemu; asked for by name it is built, with a warning in the log."""
    from workers.host import make_driver
    from workers.hostio.runner import SubprocessRunner

    env.setenv("PATH", "/usr/bin:/bin")
    env.setenv("DOMSNAP_XL_BINARY", "no-such-xl")
    assert Settings().driver == "qemu"
    env.setenv("DOMSNAP_DRIVER", "null")
    s = Settings(state_dir=tmp_path)
    assert s.driver == "null"
    runner = SubprocessRunner()
    from workers.block.lvm import Lvm
    from workers.block.qemu_img import QemuImg

    with caplog.at_level("WARNING"):
        drv = make_driver(s, runner, img=QemuImg(runner), lvm=Lvm(runner))
    assert drv.name == "null" and drv.list_domains() == []
    assert any("driver 'null' selected" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_pause_budget_is_sized_from_memory_never_below_the_minimum(
        env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.pause_budget_for(128) == 30.0  # 10 + 2*128/40 = 16.4 -> the 30 s floor
    assert s.pause_budget_for(16384) == pytest.approx(10 + 2 * 16384 / 40)
    env.setenv("DOMSNAP_PAUSE_BUDGET_MIN_S", "45")
    assert Settings().pause_budget_for(128) == 45.0
    env.setenv("DOMSNAP_PAUSE_BUDGET_S", "3")  # explicit: used as is
    assert Settings().pause_budget_for(16384) == 3.0
    env.setenv("DOMSNAP_PAUSE_BUDGET_S", "-1")
    with pytest.raises(ValidationError):
        Settings()
