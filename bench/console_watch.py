"""Tails a guest's serial console file and records when each ticker line arrives.

``python -m bench.console_watch CONSOLE OUT``: runs until killed; for every complete
line of CONSOLE that starts with ``DOMSNAP-T`` (the benchmark ticker of the test guest,
``domsnap.ticker=<s>``) it appends the host's CLOCK_MONOTONIC at arrival, in
nanoseconds, to OUT (one number a line, flushed at once). A separate process so that
its polling (every 0.5 ms) does not share a GIL with the commands being timed;
CLOCK_MONOTONIC is the same clock in every process, so the parent compares the
arrivals with its own ``time.monotonic()``.

Under TCG the guest's own clock stops while the VM is stopped, so a timestamp printed
by the guest cannot show a pause; the gap between arrivals on the host does.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MARK = b"DOMSNAP-T"
POLL_S = 0.0005


def watch(console: Path, out: Path) -> None:
    """Follow ``console`` (waiting for it to appear) and append arrival times to ``out``."""
    while not console.exists():
        time.sleep(0.01)
    fd = os.open(console, os.O_RDONLY)
    buf = b""
    with out.open("a", buffering=1) as fh:
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                time.sleep(POLL_S)
                continue
            now = time.monotonic_ns()
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.lstrip(b"\r").startswith(MARK):
                    fh.write(f"{now}\n")


def read_arrivals(out: Path) -> list[float]:
    """Arrival times (seconds of time.monotonic()) recorded so far in ``out``."""
    try:
        text = out.read_text()
    except FileNotFoundError:
        return []
    return [int(x) / 1e9 for x in text.split("\n")[:-1] if x]


def largest_gap(arrivals: list[float], start: float, end: float) -> tuple[float, float]:
    """(largest gap between consecutive arrivals that overlaps [start, end], median gap
    in the two seconds before ``start``), both in ms. The last line before the window
    and the first after it bound the gap: over a pause's [STOP, RESUME] that is the
    guest-visible pause; over a whole command, the longest the guest showed nothing."""
    pairs = list(zip(arrivals, arrivals[1:], strict=False))
    around = [b - a for a, b in pairs if b >= start and a <= end]
    before = sorted(b - a for a, b in pairs if start - 2 <= a and b < start)
    if not around:
        raise ValueError(f"no ticker line around [{start:.3f}, {end:.3f}] "
                         f"({len(arrivals)} arrivals)")
    period = before[len(before) // 2] if before else float("nan")
    return max(around) * 1000, period * 1000


def dark_around(arrivals: list[float], start: float, end: float) -> tuple[float, float]:
    """How long (ms) the guest showed nothing before ``start`` and after ``end``: from
    the last arrival before the window to ``start``, and from ``end`` to the first
    after it. Over [STOP, RESUME], they say on which side of the pause a long gap lies."""
    before = [a for a in arrivals if a <= start]
    after = [b for b in arrivals if b >= end]
    return ((start - before[-1]) * 1000 if before else float("nan"),
            (after[0] - end) * 1000 if after else float("nan"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.console_watch CONSOLE OUT")
    watch(Path(sys.argv[1]), Path(sys.argv[2]))
