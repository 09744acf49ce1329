"""Put known bytes into a running domain's disks and check images for them.

Writing goes through QEMU itself (HMP ``qemu-io`` over the domain's QMP socket), so
it lands wherever the domain writes now (the top of its chain) without any guest.
The device is the virtio-blk backend of the disk's qdev id: ``<vdev>/virtio-backend``
(``qemu-io -d vda`` names the PCI proxy, which "does not have a block device
backend"). Each write is followed by a ``flush`` so qcow2 metadata reaches the file
and an outside ``qemu-io -U`` sees it.

Checking reads an image (through its backing chain) with ``qemu-io -r -U``, which is
fine while QEMU has it open.

A QMP socket serves one client at a time: only write while no domsnap job runs on
the domain. Every helper connects, does its work and disconnects at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.integration.cluster import Domain
from workers.block.qmp import QMPClient

CHUNK = 64 * 1024  # every write and check covers one 64 KiB slot


def slot(i: int) -> int:
    """Byte offset of slot ``i`` (slots are CHUNK-sized and CHUNK-aligned)."""
    return i * CHUNK


# ---------------------------------------------------------------- QMP / HMP


def qmp_sock(dom: Domain) -> Path:
    return dom.qmp


def qmp(dom: Domain, command: str, args: dict[str, Any] | None = None) -> Any:
    """One QMP command on a fresh session (closed at once)."""
    with QMPClient(qmp_sock(dom), timeout=30) as q:
        return q.execute(command, args)


def hmp(dom: Domain, command_line: str) -> str:
    return str(qmp(dom, "human-monitor-command", {"command-line": command_line}))


def qemu_io_live(dom: Domain, vdev: str, command: str) -> str:
    out = hmp(dom, f'qemu-io -d {vdev}/virtio-backend "{command}"')
    assert "error" not in out.lower() and "fail" not in out.lower(), \
        f"HMP qemu-io {vdev} {command!r}: {out}"
    return out


def write_pattern(dom: Domain, vdev: str, offset: int, pattern: int,
                  length: int = CHUNK) -> None:
    """Write ``length`` bytes of ``pattern`` at ``offset`` of the running domain's ``vdev``."""
    assert 0 <= pattern <= 0xFF
    qemu_io_live(dom, vdev, f"write -P 0x{pattern:02x} {offset} {length}")
    qemu_io_live(dom, vdev, "flush")


def write_state(dom: Domain, vdev: str, state: Mapping[int, int]) -> None:
    """Write ``{slot index: pattern}`` into the running domain's ``vdev``."""
    for i, pattern in state.items():
        write_pattern(dom, vdev, slot(i), pattern)


def qmp_status(dom: Domain) -> str:
    return str(qmp(dom, "query-status")["status"])


# ---------------------------------------------------------------- checking images


def _read(path: str | Path, offset: int, pattern: int, length: int
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-r", "-U", "-f", "qcow2", "-c",
         f"read -P 0x{pattern:02x} {offset} {length}", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def has_pattern(path: str | Path, offset: int, pattern: int, length: int = CHUNK) -> bool:
    """Does the image (read through its backing chain) hold ``pattern`` there?"""
    res = _read(path, offset, pattern, length)
    return (res.returncode == 0 and f"read {length}/{length}" in res.stdout
            and "verification failed" not in res.stdout)


def assert_pattern(path: str | Path, offset: int, pattern: int, length: int = CHUNK) -> None:
    res = _read(path, offset, pattern, length)
    ok = (res.returncode == 0 and f"read {length}/{length}" in res.stdout
          and "verification failed" not in res.stdout)
    assert ok, (f"{path} @ {offset}: expected 0x{pattern:02x} x {length}, qemu-io said "
                f"({res.returncode}): {res.stdout.strip()} {res.stderr.strip()}\n"
                f"chain: {backing_chain(path)}")


def assert_state(path: str | Path, state: Mapping[int, int], what: str = "") -> None:
    """Every slot of ``state`` ({slot index: pattern}) holds its pattern (0 = never written)."""
    bad = {i: p for i, p in state.items() if not has_pattern(path, slot(i), p)}
    if bad:
        seen = {i: _which(path, i) for i in state}
        raise AssertionError(
            f"{what or path}: slots differ: want {_fmt(state)}, image has {_fmt(seen)}\n"
            f"chain: {backing_chain(path)}")


# the patterns the tests use (0 = never written): what a failure report looks for
KNOWN: list[int] = [0x00, *range(0x11, 0x100, 0x11)]


def _which(path: str | Path, i: int) -> int | None:
    for p in KNOWN:
        if has_pattern(path, slot(i), p):
            return p
    return None  # mixed content, or a pattern not in KNOWN


def _fmt(state: Mapping[int, int | None]) -> str:
    return "{" + ", ".join(f"{i}: {'mixed' if p is None else hex(p)}"
                           for i, p in sorted(state.items())) + "}"


# ---------------------------------------------------------------- images


def img_info(path: str | Path) -> dict[str, Any]:
    res = subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", str(path)],
                         capture_output=True, text=True, timeout=60, check=True,
                         stdin=subprocess.DEVNULL)
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def backing_of(path: str | Path) -> str | None:
    info = img_info(path)
    b = info.get("full-backing-filename") or info.get("backing-filename")
    return str(b) if b else None


def backing_chain(path: str | Path) -> list[str]:
    out: list[str] = []
    p: str | None = str(path)
    while p and p not in out:
        out.append(p)
        if not os.path.exists(p):
            out.append("<missing>")
            break
        p = backing_of(p)
    return out


def internal_snapshots(path: str | Path) -> list[str]:
    """Names from ``qemu-img snapshot -l -U`` (the human table, as an operator would)."""
    res = subprocess.run(["qemu-img", "snapshot", "-l", "-U", str(path)], capture_output=True,
                         text=True, timeout=60, check=True, stdin=subprocess.DEVNULL)
    names = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names.append(parts[1])
    return names


def files_under(d: Path) -> set[str]:
    if not d.is_dir():
        return set()
    return {str(p) for p in d.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- domain state


def qemu_pid(dom: Domain) -> int | None:
    """The domain's QEMU pid if that process is alive (asked of the qemu driver)."""
    from workers.drivers.qemu import QemuDriver
    from workers.hostio.runner import SubprocessRunner

    return QemuDriver(dom.host.state_dir, SubprocessRunner()).pid(dom.uuid)


def driver_state(dom: Domain) -> str:
    """The domain's state as the host's toolstack reports it (``domain-list --json``)."""
    out = dom.host.cli("domain-list", "--json", check=True).stdout
    for d in json.loads(out):
        if d["uuid"] == dom.uuid:
            return str(d["state"])
    raise AssertionError(f"{dom.name} not in domain-list: {out}")


def kill_domain(dom: Domain) -> None:  # pragma: no cover - last-resort cleanup
    pid = qemu_pid(dom)
    if pid:
        os.kill(pid, signal.SIGKILL)
