"""Boot the tiny test guest under real QEMU and check its disk-backed ticks."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.vm.guest import (
    BOOT_MARKER,
    QEMU_IMG,
    QEMU_SYSTEM,
    count_boots,
    create_disk,
    ensure_guest,
    qemu_argv,
    read_disk_counter,
    read_ticks,
    wait_for_tick,
)

BOOT_TIMEOUT = 120.0  # CI may have no usable KVM and run under TCG


def _require_qemu() -> None:
    # Deliberately a failure, not a skip: a VM test that silently skips when
    # QEMU is missing would hide a broken CI setup.
    for tool, package in ((QEMU_SYSTEM, "qemu-system-x86"), (QEMU_IMG, "qemu-utils")):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} not found: the vm tests need real QEMU; install it with "
                f"'apt-get install -y --no-install-recommends {package}'",
                pytrace=False,
            )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - should not happen
        pass


@pytest.mark.vm
def test_guest_boots_ticks_and_persists_counter(tmp_path: Path) -> None:
    _require_qemu()
    kernel, initrd = ensure_guest()
    image = create_disk(tmp_path / "vda.qcow2", "64M")
    assert read_disk_counter(image) is None  # fresh disk: no counter yet

    console = tmp_path / "console.log"
    qemu_log = tmp_path / "qemu.log"
    argv = qemu_argv(kernel, initrd, console, disks=[image])

    started = time.monotonic()
    with qemu_log.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        try:
            wait_for_tick(console, 3, BOOT_TIMEOUT, proc=proc)
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(
                f"{exc}\nqemu argv: {argv}\nqemu log:\n{qemu_log.read_text()}", pytrace=False
            )
        elapsed = time.monotonic() - started
        print(f"guest reached DOMSNAP-TICK n=3 after {elapsed:.1f}s ({' '.join(argv[1:5])})")

        # The counter is readable from the live image (qemu-img -U) while QEMU
        # runs: the guest fsyncs each write, so QEMU flushes it to the file.
        deadline = time.monotonic() + 30
        live = read_disk_counter(image)
        while (live is None or live < 3) and time.monotonic() < deadline:
            time.sleep(0.2)
            live = read_disk_counter(image)
        assert live is not None and live >= 3, f"live image counter {live}"
    finally:
        _stop(proc)

    assert count_boots(console) == 1, console.read_text()
    assert BOOT_MARKER in console.read_text()
    ticks = read_ticks(console)
    assert len(ticks) >= 3, ticks
    ns = [n for n, _ in ticks]
    assert ns == list(range(1, len(ns) + 1)), f"ticks do not increase by one: {ticks}"
    assert ticks[0] == (1, -1), f"fresh disk must read as -1 on tick 1: {ticks}"
    for n, disk in ticks[1:]:
        assert disk == n - 1, f"tick {n} read disk={disk}, expected {n - 1}: {ticks}"

    # QEMU was killed at an arbitrary point: the guest prints tick n and then
    # writes n, so the image holds the last tick's n, or n-1 if the kill came
    # between that print and its write.
    last = ns[-1]
    final = read_disk_counter(image)
    assert final in (last, last - 1), f"image holds {final}, last tick printed n={last}"
    assert final is not None and final >= 3


@pytest.mark.vm
def test_guest_benchmark_ticker_and_dirtier(tmp_path: Path) -> None:
    """The benchmark options (bench/libvirt.py): ``domsnap.ticker`` prints its own
    numbered lines alongside the disk ticks, ``domsnap.dirty`` rewrites a RAM file in a
    loop, and neither disturbs the disk ticks that the other VM tests rely on."""
    _require_qemu()
    kernel, initrd = ensure_guest()
    image = create_disk(tmp_path / "vda.qcow2", "64M")
    console = tmp_path / "console.log"
    qemu_log = tmp_path / "qemu.log"
    append = "console=ttyS0 quiet panic=-1 domsnap.ticker=0.05 domsnap.dirty=8"
    argv = qemu_argv(kernel, initrd, console, disks=[image], append=append)
    with qemu_log.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        try:
            wait_for_tick(console, 3, BOOT_TIMEOUT, proc=proc)
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(f"{exc}\nqemu log:\n{qemu_log.read_text()}", pytrace=False)
        deadline = time.monotonic() + BOOT_TIMEOUT  # the dirtier's second pass is done
        while "DOMSNAP-DIRTY pass=2" not in console.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"no second dirtier pass:\n{console.read_text()[-2000:]}",
                            pytrace=False)
            time.sleep(0.2)
        fast = [line.rstrip("\r") for line in console.read_text(errors="replace").splitlines()
                if line.startswith("DOMSNAP-T ")]
    finally:
        _stop(proc)
    text = console.read_text(errors="replace")
    assert count_boots(console) == 1, text
    ns = [int(line.split()[1]) for line in fast]
    assert len(ns) >= 3, text[-2000:]
    assert ns == list(range(1, len(ns) + 1)), f"ticker lines do not count up by one: {ns}"
    ticks = read_ticks(console)
    assert [n for n, _ in ticks] == list(range(1, len(ticks) + 1)), ticks
    for n, disk in ticks[1:]:
        assert disk == n - 1, f"tick {n} read disk={disk}, expected {n - 1}: {ticks}"
    assert "DOMSNAP-WARN" not in text, text[-2000:]
