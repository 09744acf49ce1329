"""What several benchmarks share: the machine line of a report, a private Redis (so
that ``INFO commandstats`` counts only the benchmark's own traffic on a machine where
other tests use the shared Redis), and Redis command counts."""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis


def accel() -> str:
    """KVM where the qemu driver would use it (workers/drivers/accel.py), else TCG."""
    from workers.drivers.accel import kvm_usable

    return "KVM" if kvm_usable() else "TCG"


def machine(note: str = "at the start") -> str:
    """Cores, KVM or TCG, the load (os.getloadavg) and Python: every report says it."""
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"{accel()}, load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) "
            f"{note}, Python {platform.python_version()}")


def cli_env(env: dict[str, str], tmp: str | Path) -> dict[str, str]:
    """The environment of a timed ``python -m domsnap`` run: bytecode as an installed
    package has it (pip compiles at install), compiled once by a warm-up run into a
    cache under ``tmp``, kept out of the source tree. PYTHONDONTWRITEBYTECODE (set by
    scripts/test.sh) would have every run compile every module again: about 0.7 s of
    CPU on this machine, which an earlier bench.hops run counted as the CLI's."""
    out = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pyc")
    return out


def load_now() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


NOISE = ("This machine is shared and noisy (2 cores; other helpers run test suites and a "
         "nested Xen lab at the same time), so absolute times vary from run to run: the "
         "ratios, measured in the same run, are the figures to compare.")


class PrivateRedis:
    """A redis-server of the benchmark's own on a free loopback port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.r.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def commands(self) -> dict[str, int]:
        """Calls per command since the server started, without INFO itself."""
        stats: dict[str, Any] = self.r.info("commandstats")  # type: ignore[assignment]
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
                if k != "cmdstat_info"}

    def stop(self) -> None:
        try:
            self.r.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def session_cpu_s(sids: set[int]) -> float:
    """CPU seconds (user + system, with reaped children's) of every process in the
    sessions ``sids`` (each fleet process starts a session of its own)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[3]) in sids:  # field 6 of stat: the session id
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def redis_cpu_s(r: redis.Redis) -> float:
    info: dict[str, Any] = r.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
