"""Fleet throughput (issue 11 item 5): N hosts on this machine, one create request per
domain submitted at once through the Python client, against the ceiling of bare Celery
tasks of the same canvas shape on the same number of worker processes.

``python -m bench.fleet [--quick] [--hosts N] [--domains-per-host M] [--rounds R]
[--no-write]``. Every host is a real ``domsnap worker`` process (its supervisor, pause
guard and two Celery pools, ``-c`` and ``--inflight-concurrency`` each) with its own
``--host`` name and state dir, on the **null driver** (workers/drivers/null.py: no
hypervisor; it exists for benchmarks and the contract suite only): each create saves a
placeholder memory image and takes one internal qcow2 snapshot with qemu-img, so what
is measured is domsnap's own work per job (validation, admission, journal, locks,
commit, Redis) and its queue. The ceiling (bench/ceiling.py) runs two Celery workers
per host on two queues with the same pool sizes: an entry task that launches a second
task on the second queue, both with empty bodies.

Both fleets use a private redis-server (so ``INFO commandstats`` counts only their
traffic) and stay up for the whole run; rounds alternate between them. Reported per
fleet: jobs/s (jobs / first submit to last done), p50/p99 submit→done, and Redis
commands per job (the commandstats delta of a round, less the idle rate of both fleets
measured before the rounds, less the benchmark's own polling). The results replace the
"Fleet throughput" section of docs/benchmarks.md, keeping earlier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    NOISE,
    PrivateRedis,
    delta,
    load_now,
    machine,
    percentile,
    redis_cpu_s,
    session_cpu_s,
)
from bench.history import write_with_history

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "Fleet throughput (null driver) against bare Celery"
PREFIX = "fleetbench"
CEILING_DB = 1


@dataclass
class Round:
    """One batch of jobs of one fleet."""

    jobs: int
    wall_s: float
    latencies_ms: list[float]
    submit_s: float
    commands: dict[str, int]
    polls: int
    failed: int = 0
    cpu_s: float = 0.0  # the fleet's processes over the round
    redis_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s


@dataclass
class Fleet:
    label: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def wait_ready(self, per_proc: int, timeout: float = 600) -> None:
        """Every Celery node logs 'ready.' once it consumes."""
        deadline = time.monotonic() + timeout
        for proc, log in zip(self.procs, self.logs, strict=True):
            while log.read_text(errors="replace").count("ready.") < per_proc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{self.label}: {log} not ready:\n"
                                     f"{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.3)

    def sids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def stop(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _spawn(argv: list[str], env: dict[str, str], log: Path, fleet: Fleet) -> None:
    with open(log, "ab") as fh:
        fleet.procs.append(subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True))
    fleet.logs.append(log)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOMSNAP_", "BENCH_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def start_domsnap(work: Path, url: str, hosts: list[str], per_host: int, conc: int
                  ) -> tuple[Fleet, dict[str, list[str]]]:
    """One ``domsnap worker --driver null`` per host, each with ``per_host`` running
    null domains of one small qcow2 disk; returns the fleet and each host's domains."""
    from domsnap.xlcfg import parse_domain_config
    from workers.drivers.null import NullDriver
    from workers.hostio.runner import SubprocessRunner

    template = work / "template.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(template), "16M"],
                   check=True, timeout=60)
    fleet = Fleet("domsnap")
    domains: dict[str, list[str]] = {}
    for h in hosts:
        root = work / h
        (root / "images").mkdir(parents=True)
        drv = NullDriver(root / "state", SubprocessRunner())
        domains[h] = []
        for i in range(per_host):
            disk = root / "images" / f"d{i}.qcow2"
            shutil.copyfile(template, disk)
            uuid = str(uuidlib.uuid4())
            drv.define(parse_domain_config(
                f'name = "{h}-d{i}"\nuuid = "{uuid}"\nmemory = 16\nvcpus = 1\n'
                f'disk = [ "{disk},qcow2,xvda,rw" ]\n'), state="running")
            domains[h].append(uuid)
        env = {**_base_env(), "DOMSNAP_REDIS_URL": url, "DOMSNAP_KEY_PREFIX": PREFIX,
               "DOMSNAP_STATE_DIR": str(root / "state"),
               "DOMSNAP_SNAPSHOT_ROOTS": str(root / "images"),
               "DOMSNAP_HEARTBEAT_S": "2", "DOMSNAP_HOST_TTL_S": "60",
               "DOMSNAP_SPACE_RESERVE_MB": "0"}
        _spawn([sys.executable, "-c", "from domsnap.cli import main; main()", "worker",
                "--host", h, "--driver", "null", "-c", str(conc),
                "--inflight-concurrency", str(conc), "--loglevel", "INFO"],
               env, work / f"domsnap-{h}.log", fleet)
    return fleet, domains


def start_ceiling(work: Path, url: str, hosts: list[str], conc: int) -> Fleet:
    """Two bare Celery workers per host (its two queues), the same pool sizes."""
    fleet = Fleet("ceiling")
    env = {**_base_env(), "BENCH_CEILING_BROKER": url}
    for h in hosts:
        for kind in ("new", "inflight"):
            _spawn([sys.executable, "-m", "celery", "-A", "bench.ceiling", "worker", "-Q",
                    f"ceiling.{kind}.{h}", "-c", str(conc), "-n", f"{kind}@{h}", "--pool",
                    "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-l", "INFO"], env, work / f"ceiling-{kind}-{h}.log", fleet)
    return fleet


def _wait_all(r: Any, keys: list[str], done: Any, timeout: float) -> tuple[dict[str, Any], int]:
    """Poll ``keys`` (one MGET a round) until ``done(value)`` holds for each; the values
    and how many MGETs it took."""
    left = list(keys)
    got: dict[str, Any] = {}
    polls = 0
    deadline = time.monotonic() + timeout
    while left:
        time.sleep(0.25)
        polls += 1
        values = r.mget(left)
        rest = []
        for key, raw in zip(left, values, strict=True):
            value = json.loads(raw) if raw else None
            if value is not None and done(value):
                got[key] = value
            else:
                rest.append(key)
        left = rest
        if left and time.monotonic() > deadline:
            raise SystemExit(f"{len(left)} jobs not done after {timeout} s (e.g. {left[0]})")
    return got, polls


def run_domsnap(red: PrivateRedis, url: str, domains: dict[str, list[str]], tag: str,
                timeout: float) -> Round:
    from domsnap.client import Client
    from domsnap.keys import Keys
    from domsnap.settings import Settings

    client = Client(Settings(redis_url=url, key_prefix=PREFIX))
    keys = Keys(PREFIX)
    order = [d for group in zip(*domains.values(), strict=True) for d in group]
    before = red.commands()
    t0 = time.time()
    ids = [client.create(uuid, name=tag) for uuid in order]  # at once: no waiting between
    submit_s = time.time() - t0
    got, polls = _wait_all(red.r, [keys.job(j) for j in ids],
                           lambda v: v.get("state") in ("succeeded", "failed"), timeout)
    after = red.commands()
    jobs = list(got.values())
    lat = [(j["finished_at"] - j["submitted_at"]) * 1000 for j in jobs]
    wall = max(j["finished_at"] for j in jobs) - min(j["submitted_at"] for j in jobs)
    failed = [j for j in jobs if j["state"] != "succeeded"]
    if failed:
        print(f"{len(failed)} jobs failed, e.g. {failed[0].get('error')}", file=sys.stderr)
    return Round(len(jobs), wall, lat, submit_s, delta(after, before), polls, len(failed))


def run_ceiling(red: PrivateRedis, url: str, hosts: list[str], n: int, timeout: float) -> Round:
    from celery import Celery

    app = Celery("ceiling-client", broker=url, backend=url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    before = red.commands()
    sent: dict[str, float] = {}
    t0 = time.time()
    for i in range(n):
        job = str(uuidlib.uuid4())
        host = hosts[i % len(hosts)]
        sent[job] = time.time()
        app.send_task("ceiling.entry", args=(job, host), queue=f"ceiling.new.{host}",
                      task_id=job)
    submit_s = time.time() - t0
    results_db = _db(url)  # the results live in the ceiling's db of the private Redis
    got, polls = _wait_all(results_db, [f"celery-task-meta-{j}-step" for j in sent],
                           lambda v: v.get("status") in ("SUCCESS", "FAILURE"), timeout)
    after = red.commands()
    done = {k.removeprefix("celery-task-meta-").removesuffix("-step"): v
            for k, v in got.items()}
    lat = [(float(v["result"]) - sent[j]) * 1000 for j, v in done.items()
           if v["status"] == "SUCCESS"]
    wall = max(float(v["result"]) for v in done.values() if v["status"] == "SUCCESS") - t0
    failed = sum(1 for v in done.values() if v["status"] != "SUCCESS")
    app.close()
    results_db.close()
    return Round(n, wall, lat, submit_s, delta(after, before), polls, failed)


def _db(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def idle_rate(red: PrivateRedis, seconds: float) -> float:
    """Redis commands per second of both fleets doing nothing (Celery's BRPOP loops,
    heartbeats), to take out of each round's count."""
    before = red.commands()
    time.sleep(seconds)
    return sum(delta(red.commands(), before).values()) / seconds


def per_job(rnd: Round, idle: float) -> float:
    total = sum(rnd.commands.values()) - rnd.polls - idle * rnd.wall_s
    return total / rnd.jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 hosts, 40 jobs, 1 round")
    ap.add_argument("--hosts", type=int, default=None)
    ap.add_argument("--domains-per-host", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=2,
                    help="each pool's processes (domsnap's default: 2 and 2)")
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    ap.add_argument("--growth-only", action="store_true",
                    help="only add this host count to the growth figures (docs/bench-data)")
    args = ap.parse_args(argv)
    n_hosts = args.hosts or (2 if args.quick else 10)
    per_host = args.domains_per_host or (20 if args.quick else 100)
    rounds = args.rounds or (1 if args.quick else 3)
    hosts = [f"fleet-{i:02d}" for i in range(n_hosts)]
    where = machine()
    timeout = 60 + 2.0 * n_hosts * per_host
    results: dict[str, list[Round]] = {"domsnap": [], "ceiling": []}
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dsfleet-") as tmp:
        work = Path(tmp)
        red = PrivateRedis(work / "redis")
        fleets: list[Fleet] = []
        try:
            ceiling_url = red.url.rsplit("/", 1)[0] + f"/{CEILING_DB}"
            ds, domains = start_domsnap(work, red.url, hosts, per_host, args.concurrency)
            fleets.append(ds)
            ceil = start_ceiling(work, ceiling_url, hosts, args.concurrency)
            fleets.append(ceil)
            ds.wait_ready(2)
            ceil.wait_ready(1)
            time.sleep(3)  # first heartbeats published, inventories in Redis
            cpu0 = {f.label: session_cpu_s(f.sids()) for f in fleets}
            idle = idle_rate(red, 5.0)
            idle_cpu = {f.label: (session_cpu_s(f.sids()) - cpu0[f.label]) / 5.0
                        for f in fleets}
            for i in range(rounds):
                order = ["domsnap", "ceiling"] if i % 2 == 0 else ["ceiling", "domsnap"]
                for label in order:
                    loads.append(load_now())
                    fleet = ds if label == "domsnap" else ceil
                    cpu0, rcpu0 = session_cpu_s(fleet.sids()), redis_cpu_s(red.r)
                    if label == "domsnap":
                        rnd = run_domsnap(red, red.url, domains, f"r{i}", timeout)
                    else:
                        rnd = run_ceiling(red, ceiling_url, hosts, n_hosts * per_host, timeout)
                    rnd.cpu_s = session_cpu_s(fleet.sids()) - cpu0
                    rnd.redis_cpu_s = redis_cpu_s(red.r) - rcpu0
                    results[label].append(rnd)
                    print(f"round {i} {label}: {rnd.rate:.1f} jobs/s, p50 "
                          f"{statistics.median(rnd.latencies_ms):.0f} ms, "
                          f"{per_job(rnd, idle):.1f} cmds/job, failed {rnd.failed}",
                          file=sys.stderr)
        finally:
            for fl in fleets:
                fl.stop()
            red.stop()
    from bench import data
    from bench.jobcost import measure

    cost = measure(min(50, n_hosts * per_host), trace=True)
    body, summary = report(results, idle, args, n_hosts, per_host, rounds, where, loads)
    body += analysis(results, idle_cpu, cost)
    print("\n".join(body))
    if not args.no_write:
        figures: dict[str, float] = {"jobs": n_hosts * per_host}
        for label, rs in results.items():
            figures[f"{label}_rate"] = statistics.median(r.rate for r in rs)
            figures[f"{label}_p50"] = statistics.median(
                statistics.median(r.latencies_ms) for r in rs)
            figures[f"{label}_p99"] = statistics.median(
                percentile(r.latencies_ms, 99) for r in rs)
        data.save("fleet", n_hosts, figures)
        if not args.growth_only:
            write_with_history(DOC, HEADING, body, summary)
    return 1 if any(r.failed for rs in results.values() for r in rs) else 0


def report(results: dict[str, list[Round]], idle: float, args: argparse.Namespace,
           n_hosts: int, per_host: int, rounds: int, where: str, loads: list[str]
           ) -> tuple[list[str], str]:
    n = n_hosts * per_host
    med: dict[str, dict[str, float]] = {}
    for label, rs in results.items():
        med[label] = {
            "rate": statistics.median(r.rate for r in rs),
            "p50": statistics.median(statistics.median(r.latencies_ms) for r in rs),
            "p99": statistics.median(percentile(r.latencies_ms, 99) for r in rs),
            "cmds": statistics.median(per_job(r, idle) for r in rs),
            "submit": statistics.median(r.submit_s for r in rs),
            "cpu": statistics.median(r.cpu_s / r.jobs * 1000 for r in rs),
            "rcpu": statistics.median(r.redis_cpu_s / r.jobs * 1000 for r in rs),
        }
    ratio = med["domsnap"]["rate"] / med["ceiling"]["rate"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.fleet"
        f"{' --quick' if args.quick else ''} --hosts {n_hosts} --domains-per-host {per_host} "
        f"--rounds {rounds}` on {where}; load at the start of each round: {', '.join(loads)}. "
        + NOISE,
        "",
        f"{n_hosts} hosts on this machine, each a real `domsnap worker --driver null` (pools "
        f"of {args.concurrency} + {args.concurrency} processes); {n:,} domains, one create "
        f"(memory + one internal qcow2 disk snapshot) per domain, all {n:,} submitted at "
        "once through the Python client. The **null driver has no hypervisor: it exists for "
        "benchmarks and the driver contract suite only** (its memory image is a placeholder; "
        "its disk snapshot is a real `qemu-img snapshot -c`). Ceiling: bare Celery, two "
        "workers per host on two queues with the same pool sizes, an entry task that "
        "launches a second one (a live create's canvas: entry on the new-work queue, "
        "continuation on the in-flight queue), empty bodies, domsnap's Celery settings. "
        f"Rounds alternate between the two fleets; medians of {rounds} round(s). Redis "
        "commands per job: `INFO commandstats` delta of a private redis-server over the "
        f"round, less the idle traffic of both fleets ({idle:.0f} commands/s: Celery's "
        "BRPOP loops, heartbeats) and the benchmark's own polling.",
        "",
        "| fleet | jobs/s | p50 submit→done (ms) | p99 submit→done (ms) | Redis cmds/job "
        "| workers' CPU/job (ms) | Redis CPU/job (ms) | submit all (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, m in med.items():
        lines.append(f"| {label} | {m['rate']:.1f} | {m['p50']:.0f} | {m['p99']:.0f} | "
                     f"{m['cmds']:.1f} | {m['cpu']:.1f} | {m['rcpu']:.2f} | "
                     f"{m['submit']:.1f} |")
    summary = (f"{time.strftime('%Y-%m-%d')}, {n_hosts} hosts, {n:,} jobs: domsnap "
               f"{med['domsnap']['rate']:.1f} jobs/s, ceiling {med['ceiling']['rate']:.1f} "
               f"jobs/s, ratio {ratio:.2f}x; p50 {med['domsnap']['p50']:.0f} ms, p99 "
               f"{med['domsnap']['p99']:.0f} ms; {med['domsnap']['cmds']:.0f} Redis cmds/job "
               f"(ceiling {med['ceiling']['cmds']:.0f})")
    lines += ["", f"domsnap / ceiling (jobs/s): **{ratio:.2f}x** (target ≥ 0.8x).", ""]
    top = _top_commands(results["domsnap"], results["ceiling"], n)
    lines += ["Redis commands per job by command (median round, idle traffic not taken out):",
              "", "| command | domsnap | ceiling |", "| --- | --- | --- |", *top]
    return lines, summary


def analysis(results: dict[str, list[Round]], idle_cpu: dict[str, float],
             cost: dict[str, Any]) -> list[str]:
    """Why domsnap is below the ceiling: CPU per job (the machine's 2 cores are the
    limit), and what one create costs the host, measured without the queue."""
    def cpu(label: str) -> float:
        return statistics.median(r.cpu_s / r.jobs * 1000 for r in results[label])

    lines = ["", "### Why: what a job costs", "",
             f"Both fleets are CPU-bound on this machine: {os.cpu_count()} cores run the "
             "client, every worker process and Redis. Idle, the domsnap fleet burns "
             f"{idle_cpu.get('domsnap', 0) * 1000:.0f} ms of CPU a second (heartbeats listing "
             "every domain, the pause guards' polls, Celery's loops), the ceiling "
             f"{idle_cpu.get('ceiling', 0) * 1000:.0f} ms. Per job, the workers' processes "
             f"used {cpu('domsnap'):.0f} ms of CPU in domsnap's fleet against "
             f"{cpu('ceiling'):.0f} ms in the ceiling's.", "",
             f"One create called directly on a null-driver host in one process (no queue; "
             f"`python -m bench.jobcost --jobs {cost['jobs']} --trace`), per job:", "",
             "| what | per job |", "| --- | --- |",
             f"| wall (ms) | {cost['wall_ms']:.1f} |",
             f"| CPU of the engine, this process (ms) | {cost['cpu_ms']:.1f} |",
             f"| CPU of qemu-img (ms) | {cost['children_cpu_ms']:.1f} |",
             f"| Redis round trips | {cost['trips']:.1f} |",
             f"| Redis commands | {cost['commands']:.1f} |",
             f"| fsyncs | {cost['fsyncs']:.1f} |",
             f"| `Client.create`: wall / CPU (ms) | {cost['client_wall_ms']:.1f} / "
             f"{cost['client_cpu_ms']:.1f} |",
             f"| `Client.create`: Redis round trips | {cost['client_trips']:.1f} |",
             "", "Who makes them (round trips and fsyncs per job, by caller):", "", "```",
             *cost.get("callers", "").splitlines()[:24], "```"]
    return lines


def _top_commands(ds: list[Round], ce: list[Round], n: int, limit: int = 14) -> list[str]:
    def mid(rs: list[Round]) -> dict[str, int]:
        return sorted(rs, key=lambda r: r.rate)[len(rs) // 2].commands

    a, b = mid(ds), mid(ce)
    names = sorted(set(a) | set(b), key=lambda k: -(a.get(k, 0) + b.get(k, 0)))[:limit]
    return [f"| {k} | {a.get(k, 0) / n:.1f} | {b.get(k, 0) / n:.1f} |" for k in names]


if __name__ == "__main__":
    raise SystemExit(main())
