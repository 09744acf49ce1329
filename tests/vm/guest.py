"""Helpers for tests that boot the tiny domsnap test guest under real QEMU.

The guest (kernel + initramfs) is assembled from Debian packages by
``scripts/build-guest.sh`` into a cache directory (``$DOMSNAP_GUEST_DIR``,
default ``<repo>/.cache/guest``). Its ``/init`` prints ``DOMSNAP-BOOT`` on the
serial console, then once per tick (``domsnap.tick=<seconds>`` on the kernel
command line, default 1)::

    DOMSNAP-TICK n=<n> disk=<prev>

``n`` is an in-memory counter (1 after each boot, and continuing after a
memory-state restore); ``prev`` is the counter found in the first 512-byte
block of ``/dev/vda`` before this tick (-1 when none). After printing, the
guest writes ``"<n>\\n"`` zero-padded to 512 bytes into that block (and into
``/dev/vdb`` when present), with O_DIRECT and fsync. Without ``/dev/vda`` it
prints ``DOMSNAP-NODISK`` once and ticks with ``disk=-1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from workers.drivers.accel import accelerators, kvm_usable  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-guest.sh"

KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"
BOOT_MARKER = "DOMSNAP-BOOT"
NODISK_MARKER = "DOMSNAP-NODISK"
TICK_RE = re.compile(r"DOMSNAP-TICK n=(\d+) disk=(-?\d+)\r?$")

QEMU_SYSTEM = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"


def guest_dir() -> Path:
    """Where the built guest is cached."""
    env = os.environ.get("DOMSNAP_GUEST_DIR")
    return Path(env) if env else REPO_ROOT / ".cache" / "guest"


def ensure_guest() -> tuple[Path, Path]:
    """Build the guest if needed; return ``(kernel, initrd)``.

    The build script is idempotent and returns at once when the cache is up
    to date, so calling this from every test is cheap.
    """
    out = guest_dir()
    out.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT} {out} failed with exit code {res.returncode}:\n"
            f"{res.stdout}\n{res.stderr}"
        )
    kernel, initrd = out / "vmlinuz", out / "initramfs.cpio.gz"
    for f in (kernel, initrd):
        if not f.is_file():
            raise RuntimeError(f"{BUILD_SCRIPT} did not produce {f}")
    return kernel, initrd


def require_tool(name: str, package: str) -> str:
    """Path of ``name``, or raise RuntimeError naming the Debian package."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name} not found on PATH: the VM tests need real QEMU "
            f"(apt-get install -y --no-install-recommends {package})"
        )
    return path


def accel_args() -> list[str]:
    """QEMU accelerator arguments, chosen as the qemu driver chooses them
    (:func:`workers.drivers.accel.accelerators`); ``DOMSNAP_QEMU_ACCEL`` overrides."""
    env = os.environ.get("DOMSNAP_QEMU_ACCEL")
    args: list[str] = []
    for a in accelerators([a.strip() for a in env.split(",") if a.strip()] if env else None):
        args += ["-accel", a]
    return args


def qemu_argv(
    kernel: Path,
    initrd: Path,
    console_path: Path,
    *,
    disks: list[Path] | None = None,
    append: str = KERNEL_CMDLINE,
    memory_mib: int = 128,
    extra: list[str] | None = None,
) -> list[str]:
    """argv booting the guest with its serial console logged to a file.

    Each disk in ``disks`` (qcow2) is attached as virtio-blk: the first is
    the guest's /dev/vda (node names ``vda-file``/``vda-qcow2``, device id
    ``vda``), the second /dev/vdb, and so on.
    """
    argv = [
        require_tool(QEMU_SYSTEM, "qemu-system-x86"),
        *accel_args(),
        "-m", str(memory_mib),
        "-nodefaults",
        "-display", "none",
        "-no-user-config",
        "-serial", f"file:{console_path}",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", append,
    ]  # fmt: skip
    for i, disk in enumerate(disks or []):
        name = "vd" + chr(ord("a") + i)
        filename = str(disk).replace(",", ",,")  # QEMU option syntax escape
        argv += [
            "-blockdev", f"driver=file,filename={filename},node-name={name}-file",
            "-blockdev", f"driver=qcow2,file={name}-file,node-name={name}-qcow2",
            "-device", f"virtio-blk-pci,drive={name}-qcow2,id={name}",
        ]  # fmt: skip
    return argv + list(extra or [])


def create_disk(path: Path, size: str = "64M") -> Path:
    """Create a fresh qcow2 image."""
    subprocess.run(
        [require_tool(QEMU_IMG, "qemu-utils"), "create", "-q", "-f", "qcow2", str(path), size],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def _complete_lines(console_path: Path) -> list[str]:
    try:
        data = Path(console_path).read_bytes()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1]  # the last piece may still be being written


def read_ticks(console_path: Path) -> list[tuple[int, int]]:
    """``(n, disk)`` of every complete tick line in the console log, in order
    (across reboots too: ``n`` starts again at 1 after each boot)."""
    ticks = []
    for line in _complete_lines(console_path):
        m = TICK_RE.search(line)
        if m:
            ticks.append((int(m.group(1)), int(m.group(2))))
    return ticks


def count_boots(console_path: Path) -> int:
    """How many times the guest printed DOMSNAP-BOOT."""
    return sum(1 for line in _complete_lines(console_path) if BOOT_MARKER in line)


def console_tail(console_path: Path, chars: int = 2000) -> str:
    try:
        return Path(console_path).read_bytes()[-chars:].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "<no console file>"


def wait_for_tick(
    console_path: Path,
    min_n: int,
    timeout: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    poll: float = 0.1,
) -> int:
    """Wait until the latest tick on the console has ``n >= min_n``; return it.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError if ``proc``
    (the QEMU process, when given) exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        ticks = read_ticks(console_path)
        if ticks and ticks[-1][0] >= min_n:
            return ticks[-1][0]
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"QEMU exited with code {proc.returncode} before tick n={min_n}; "
                f"console:\n{console_tail(console_path)}"
            )
        if time.monotonic() >= deadline:
            last = ticks[-1] if ticks else None
            raise TimeoutError(
                f"no tick n>={min_n} within {timeout}s (last tick: {last}); "
                f"console:\n{console_tail(console_path)}"
            )
        time.sleep(poll)


def parse_counter_block(block: bytes) -> int | None:
    """The counter in a first block: ASCII digits then a newline, else None."""
    head, sep, _ = block.partition(b"\n")
    if not sep or not head or not head.isdigit() or len(head) > 19:
        return None
    return int(head)


def read_disk_counter(image_path: Path, fmt: str | None = "qcow2") -> int | None:
    """Counter in the first block of a disk image, or None if it has none.

    Uses ``qemu-img dd -U`` (force-share), so it works while a QEMU has the
    image open; what it sees then is what QEMU has flushed to the file (the
    guest fsyncs every write, so that is the last completed tick).
    """
    qemu_img = require_tool(QEMU_IMG, "qemu-utils")
    with tempfile.TemporaryDirectory(prefix="domsnap-dd-") as tmp:
        out = Path(tmp) / "block0.raw"
        argv = [qemu_img, "dd", "-U"]
        if fmt:
            argv += ["-f", fmt]
        argv += ["-O", "raw", "bs=512", "count=1", f"if={image_path}", f"of={out}"]
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
        return parse_counter_block(out.read_bytes()[:512])
