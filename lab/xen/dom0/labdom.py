"""Helpers shared by the lab's dom0 scripts that drive the real ``xl`` by hand
(capture.py, bench_live.py): run xl with a timeout, make a PV domU from the lab's guest,
and follow its console with this process's own timestamps.

Why a console follower: xenconsoled's ``--timestamp=guest`` prefixes each line with
``[YYYY-mm-dd HH:MM:SS]`` (1 s resolution), too coarse for a pause of a fraction of a
second. ``ConsoleFollower`` polls the console log every ``poll_s`` (10 ms) and stamps each
new line with ``time.monotonic()`` / ``time.time()`` on arrival; the guest's own
``up=`` (its /proc/uptime, 10 ms) is a second, independent clock.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

IMAGES = Path("/var/lib/lab/images")
TICK = re.compile(r"DOMSNAP-TICK n=(\d+) disk=(-?\d+)(?: up=([0-9.]+))?")


@dataclass
class Run:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    started: float   # time.time() at the start
    ended: float


def xl(*args: str, timeout: float = 900) -> Run:
    return run(["xl", *args], timeout=timeout)


def run(argv: list[str], timeout: float = 900) -> Run:
    t0, w0 = time.monotonic(), time.time()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -999
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = (exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else "") \
            + f"\n[lab: timed out after {timeout} s]"
    return Run(argv, rc, out, err, round(time.monotonic() - t0, 3), w0, time.time())


def domid(name: str) -> str:
    return xl("domid", name).stdout.strip()


def state_flags(name: str) -> str:
    r = xl("list", name)
    if r.rc != 0:
        return "absent"
    return r.stdout.splitlines()[-1].split()[4]


def make_domain(name: str, guest: Path, memory: int, extra: str, disks: int = 1,
                disk_size: str = "64M") -> tuple[Path, Run]:
    """Config + qcow2 disks for a PV domU of the lab's guest; ``xl create`` it."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    kernel, ramdisk = IMAGES / "vmlinuz", IMAGES / "initramfs.cpio.gz"
    if not kernel.exists():
        shutil.copyfile(guest / "vmlinuz", kernel)
        shutil.copyfile(guest / "initramfs.cpio.gz", ramdisk)
    specs = []
    for vdev in ("xvda", "xvdb")[:disks]:
        path = IMAGES / f"{name}-{vdev}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), disk_size],
                       check=True, timeout=120)
        specs.append(f'"format=qcow2, vdev={vdev}, access=rw, backendtype=qdisk, '
                     f'target={path}"')
    cfg = IMAGES / f"{name}.cfg"
    cfg.write_text("\n".join([
        f'name = "{name}"', 'type = "pv"', f"memory = {memory}", "vcpus = 1",
        f'kernel = "{kernel}"', f'ramdisk = "{ramdisk}"', f'extra = "console=hvc0 quiet {extra}"',
        f"disk = [ {', '.join(specs)} ]", ""]))
    return cfg, create(name, cfg)


# libxl gives the device model (QEMU, the qdisk backend) a fixed time to start and to
# answer its first QMP commands (LIBXL_DEVICE_MODEL_START_TIMEOUT, compiled in): on a
# loaded host, nested, QEMU can miss it ("Post DM startup configs failed, rc=-9",
# "device model did not start: -9") and xl create fails with 3. That is the host's load,
# not the domain: try again (seen in the lab at host load ~25).
DM_TIMEOUT = ("device model did not start", "Post DM startup configs failed",
              # the same for a hotplug script (phy disks: /etc/xen/scripts/block), seen at
              # host load ~10: "/etc/xen/scripts/block add because of timeout"
              "because of timeout")


def create(name: str, cfg: Path, attempts: int = 3) -> Run:
    tries = []
    for _ in range(attempts):
        r = xl("create", str(cfg), timeout=900)
        if r.rc == 0 or not any(s in r.stderr for s in DM_TIMEOUT):
            break
        tries.append(r.stderr.strip().splitlines()[-1:])
        xl("destroy", name)
        time.sleep(5)
    if tries:
        r.stderr += f"\n[lab: xl create retried {len(tries)} time(s) after a device-model timeout]"
    return r


class ConsoleFollower(threading.Thread):
    """Follows /var/log/xen/console/guest-<name>.log from its current end; every
    complete new line is kept with (monotonic, wall) at the moment it was seen."""

    def __init__(self, name: str, poll_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/var/log/xen/console/guest-{name}.log")
        self.poll_s = poll_s
        self.lines: list[tuple[float, float, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def run(self) -> None:
        buf = b""
        while not self.stop.is_set():
            try:
                with self.path.open("rb") as fh:
                    fh.seek(self.offset)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            if data:
                mono, wall = time.monotonic(), time.time()
                self.offset += len(data)
                buf += data
                *done, buf = buf.split(b"\n")
                with self.lock:
                    for raw in done:
                        self.lines.append((mono, wall, raw.decode(errors="replace")))
            time.sleep(self.poll_s)

    def ticks(self, since: float = 0.0) -> list[tuple[float, float, int, float | None]]:
        """(monotonic, wall, n, guest uptime) of every tick seen after ``since``."""
        out = []
        with self.lock:
            lines = list(self.lines)
        for mono, wall, line in lines:
            if mono < since:
                continue
            m = TICK.search(line)
            if m:
                out.append((mono, wall, int(m[1]), float(m[3]) if m[3] else None))
        return out

    def wait_ticks(self, count: int, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.ticks(since)) >= count:
                return True
            time.sleep(0.1)
        return False


def largest_gap(ticks: list[tuple[float, float, int, float | None]]) -> dict[str, float | int]:
    """The largest gap between consecutive ticks, by this host's clock and by the
    guest's uptime (the same pair of ticks), with the tick numbers around it."""
    best: dict[str, float | int] = {"host_s": 0.0}
    for a, b in zip(ticks, ticks[1:], strict=False):
        gap = b[0] - a[0]
        if gap > best["host_s"]:
            best = {"host_s": round(gap, 3), "n_before": a[2], "n_after": b[2],
                    "at_wall": round(a[1], 3)}
            if a[3] is not None and b[3] is not None:
                best["guest_s"] = round(b[3] - a[3], 3)
    return best


class Recorder:
    """Steps in ``OUT/results.json`` in smoke.py's format (run.sh prints them), appended
    to what an earlier suite of the same boot wrote; ``LAB-STEP`` lines on the console."""

    def __init__(self, out: Path, suite: str) -> None:
        import json

        self.json = json
        self.path = out / "results.json"
        self.suite = suite
        try:
            self.doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.doc = {"host": "lab-dom0", "steps": [], "facts": {}}
        self.doc.setdefault("facts", {}).setdefault("suites", []).append(suite)

    def save(self) -> None:
        import os

        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.json.dumps(self.doc, indent=2))
        os.replace(tmp, self.path)

    def step(self, name: str, fn: object) -> bool:
        import traceback

        print(f"LAB-STEP-START {self.suite}:{name}", flush=True)
        t0 = time.monotonic()
        data: dict[str, object] = {}
        try:
            got = fn()  # type: ignore[operator]
            detail, data = (got, {}) if isinstance(got, str) else got
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is a result
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            data = {"traceback": traceback.format_exc()}
        secs = round(time.monotonic() - t0, 2)
        self.doc["steps"].append({"name": f"{self.suite}:{name}", "ok": ok, "seconds": secs,
                                  "detail": detail, "data": data, "logs": {}})
        self.save()
        print(f"LAB-STEP {self.suite}:{name} {'ok' if ok else 'FAIL'} {secs:.1f}s {detail}",
              flush=True)
        return ok
