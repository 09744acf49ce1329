"""CLI start-up (issue 11): ``domsnap --help`` and a short ``snapshot-list``, as a user
runs them (a new Python process each time), against the floor of ``python -c pass``.

``python -m bench.startup [--quick] [--runs N] [--baseline-rev REV] [--no-write]``:
every command runs ``--runs`` times, all commands interleaved round by round, and
the median wall time of each is reported with its ratio to the floor. The listing
commands read a domain with ``--snapshots`` snapshots written under a throwaway key
prefix (deleted afterwards) of the Redis at ``DOMSNAP_REDIS_URL`` (default the test
Redis, db 11). ``--baseline-rev`` also times the CLI of an earlier git revision
(exported to a temporary directory) in the same rounds: the "before". The results
replace the "CLI start-up" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.metadata import DOM, machine, record
from bench.report import write_section
from domsnap.store import Store
from schemas.models import DomainInfo, HostInventory

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "CLI start-up"
DOMAIN = "bench-web-01"


def export_rev(rev: str, into: Path) -> Path:
    """The tree of git revision ``rev`` under ``into`` (for the baseline CLI)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def time_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run. The CPU time (user + system of the child) is what
    start-up costs; it depends far less than the wall time on what else the machine
    runs, so both are reported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    took = (time.perf_counter() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return took, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 runs, 1,000 snapshots")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--snapshots", type=int, default=None)
    ap.add_argument("--baseline-rev", help="also time the CLI of this git revision")
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = ap.parse_args(argv)
    runs = args.runs or (5 if args.quick else 15)
    n = args.snapshots or (1_000 if args.quick else 10_000)
    url = os.environ.get("DOMSNAP_REDIS_URL", "redis://127.0.0.1:6379/11")
    prefix = f"dsbench-{secrets.token_hex(4)}"
    where = machine()
    store = Store.from_url(url, prefix=prefix)
    py = sys.executable
    base = {k: v for k, v in os.environ.items()
            if not k.upper().startswith("DOMSNAP_") and k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="domsnap-bench-") as tmp:
        # bytecode as an installed package has it (compiled once, by the warm-up run),
        # kept out of the source trees
        env = {**base, "PYTHONPATH": str(REPO), "DOMSNAP_REDIS_URL": url,
               "DOMSNAP_KEY_PREFIX": prefix, "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pyc")}
        cfg = Path(tmp) / "empty.toml"  # DOMSNAP_CONFIG set: the fast path steps aside
        cfg.write_text("")
        full = {**env, "DOMSNAP_CONFIG": str(cfg)}
        mid = f"daily-{n // 2:07d}"
        dm = [py, "-m", "domsnap"]
        # each command runs in its tree (python puts the working directory first on
        # sys.path)
        cmds: dict[str, tuple[list[str], dict[str, str], Path]] = {
            "python -c pass (floor)": ([py, "-c", "pass"], env, REPO),
            "python -c 'import click'": ([py, "-c", "import click"], env, REPO),
            "domsnap --help": ([*dm, "--help"], env, REPO),
            "domsnap snapshot-list --help": ([*dm, "snapshot-list", "--help"], env, REPO),
            "snapshot-list --limit 20 (fast path)":
                ([*dm, "snapshot-list", "--limit", "20", DOMAIN], env, REPO),
            "snapshot-list -n NAME (fast path)":
                ([*dm, "snapshot-list", "-n", mid, DOMAIN], env, REPO),
            "snapshot-list --limit 20 (full path)":
                ([*dm, "snapshot-list", "--limit", "20", DOMAIN], full, REPO),
            f"snapshot-list, all {n:,} (fast path)":
                ([*dm, "snapshot-list", DOMAIN], env, REPO),
        }
        if args.baseline_rev:
            old = export_rev(args.baseline_rev, Path(tmp) / "old")
            old_env = {**env, "PYTHONPATH": str(old)}
            run_old = [py, "-c", "from domsnap.cli import main; main()"]
            cmds[f"before ({args.baseline_rev}): domsnap --help"] = (
                [*run_old, "--help"], old_env, old)
            cmds[f"before ({args.baseline_rev}): snapshot-list, all {n:,}"] = (
                [*run_old, "snapshot-list", DOMAIN], old_env, old)
        try:
            store.publish_inventory(HostInventory(
                host="bench-host-01", driver="xl", published_at=time.time(),
                domains=[DomainInfo(uuid=DOM, name=DOMAIN, state="running")]), 3600)
            for start in range(0, n, 1000):
                store.put_snapshots(DOM, [record(i) for i in range(start, min(n, start + 1000))])
            times: dict[str, list[float]] = {k: [] for k in cmds}
            cpu: dict[str, list[float]] = {k: [] for k in cmds}
            for argv_, env_, cwd in cmds.values():  # warm the page and bytecode caches
                time_once(argv_, env_, cwd)
            for _ in range(runs):
                for k, (argv_, env_, cwd) in cmds.items():
                    wall, used = time_once(argv_, env_, cwd)
                    times[k].append(wall)
                    cpu[k].append(used)
        finally:
            for key in store.r.scan_iter(f"{prefix}:*", count=1000):
                store.r.delete(key)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    floor = med["python -c pass (floor)"]
    floor_cpu = med_cpu["python -c pass (floor)"]
    body = [f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.startup"
            f"{' --quick' if args.quick else ''} --runs {runs}"
            f"{f' --baseline-rev {args.baseline_rev}' if args.baseline_rev else ''}` on "
            f"{where}. Each command is a new process (`python -m domsnap ...` of this tree), "
            "with bytecode compiled once as an installed package has it; "
            f"the commands are interleaved round by round, medians of {runs}. The domain "
            f"holds {n:,} snapshots. \"full path\": the same command with DOMSNAP_CONFIG set, "
            "which makes the CLI use the full client (pydantic-settings, redis-py, pydantic) "
            "instead of its stdlib fast path. Wall: elapsed time; CPU: user + system time of "
            "the process (what start-up costs, much less sensitive to the machine's load).",
            "", "| command | wall median (ms) | wall min (ms) | wall x floor | CPU median (ms) "
            "| CPU x floor |", "| --- | --- | --- | --- | --- | --- |"]
    for k, v in med.items():
        body.append(f"| {k} | {v:.0f} | {min(times[k]):.0f} | {v / floor:.1f} | "
                    f"{med_cpu[k]:.0f} | {med_cpu[k] / floor_cpu:.1f} |")
    body += ["", "Target (issue 11): `--help` and a short `snapshot-list` within 150 ms."]
    print("\n".join(body))
    if not args.no_write:
        write_section(DOC, HEADING, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
