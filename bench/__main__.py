"""``python -m bench`` (``make bench``): every benchmark's full mode, one after the
other, each writing its section of docs/benchmarks.md, then the growth plots.

``python -m bench [--only NAME ...] [--quick --no-write]``: ``--quick --no-write`` runs
every quick mode and leaves the docs alone (what the CI ``bench`` suite does, module by
module). The libvirt comparison of issue 11 (item 1) is not here: it needs libvirt.
Full mode takes about 45 minutes on a 2-core machine under TCG (more under load).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

# the order: cheap and Redis-only first, then the fleet, then the real guests
BENCHES = ["metadata", "startup", "fleet", "hops", "disks", "memory_dd", "memory_save",
           "xl_strategies"]
NO_QUICK = {"memory_save", "xl_strategies"}  # full mode only (real guests, fixed runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=BENCHES, help="just these benchmarks")
    ap.add_argument("--quick", action="store_true", help="every quick mode")
    ap.add_argument("--no-write", action="store_true", help="leave the docs alone")
    args = ap.parse_args(argv)
    names = args.only or BENCHES
    failed = []
    for name in names:
        if args.quick and name in NO_QUICK:
            print(f"== {name}: no quick mode, skipped", flush=True)
            continue
        flags = (["--quick"] if args.quick else []) + (["--no-write"] if args.no_write else [])
        print(f"== {name} {' '.join(flags)}", flush=True)
        t0 = time.monotonic()
        mod = importlib.import_module(f"bench.{name}")
        try:
            if name in NO_QUICK:  # these two read sys.argv themselves
                sys.argv = [f"bench.{name}"]
                rc = mod.main() or 0
            else:
                rc = mod.main(flags)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        print(f"== {name}: exit {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if not args.no_write:
        from bench import plots

        plots.main([])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
