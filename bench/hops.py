"""Where the wall time of one create goes (issue 11 item 2), hop by hop, and what the
queue adds: the same steps called directly in one process.

``python -m bench.hops [--quick] [--runs N] [--memory MiB] [--no-write]``: one worker
host on the qemu driver with a real guest (busybox, two qcow2 disks, like
bench/memory_save.py); each round takes three snapshots, interleaved:

1. the CLI (``python -m domsnap snapshot-create``, a new process) and, for its start-up,
   ``snapshot-create --help`` (the same imports, no Redis);
2. the Python client (``Client.create`` + ``Client.wait``), broken down with the job's
   own timestamps: ``submitted_at``, the ``admitted`` event (end of admission on the
   host), the ``capture`` event (the continuation step has started), the ``resumed``
   event (its data: pause, memory save, fsync, disk transaction), ``finished_at`` (the
   commit is in Redis), and the moment ``wait`` returned (event delivery: the job's
   notify channel wakes it);
3. direct: resolve, validation, the job record, admission (:func:`admit`) and the live
   step (:func:`workers.engine.create.run_live`) called in this process, no queue;
4. before: the CLI and the client as they were before issue 11's submit and wait
   changes: the request sent by Celery's ``send_task`` (``DOMSNAP_ENQUEUE=celery``)
   and, for the client, the wait polling every 100 ms.

The results replace the "Where the wall time of a create goes" section of
docs/benchmarks.md, keeping earlier runs' figures.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from bench.harness import NOISE, cli_env, load_now, machine
from bench.history import write_with_history

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HEADING = "Where the wall time of a create goes (qemu driver)"
ROWS = ["CLI: whole command (new process)", "CLI: start-up (`snapshot-create --help`)",
        "CLI: whole command, CPU time", "CLI: start-up, CPU time",
        "client: submit (resolve, validate, claim, job record, enqueue)",
        "queue hop + admission (submitted → admitted)",
        "continuation hop + step admission (admitted → capture)",
        "capture (capture → resumed)", "  of which: guest paused", "  of which: memory save",
        "  of which: fsync of the memory image", "commit + end (resumed → finished)",
        "event delivery to the waiting client (finished → wait returns)",
        "client: whole create (create + wait)",
        "direct: resolve", "direct: validation", "direct: name claim + job record",
        "direct: admission", "direct: live step (capture + commit + end)",
        "direct: whole create (one process, no queue)",
        # the same, the way it was done before (interleaved in the same rounds)
        "before: CLI whole command, request sent by Celery (`DOMSNAP_ENQUEUE=celery`)",
        "before: CLI whole command by Celery, CPU time",
        "before: event delivery, polling every 100 ms (finished → wait returns)",
        "before: client whole create, Celery send_task + polling"]


def _ms(a: float, b: float) -> float:
    return (b - a) * 1000


def through_client(client: Any, dom: str, name: str) -> dict[str, float]:
    t0 = time.time()
    job_id = client.create(dom, name=name)
    t1 = time.time()
    job = client.wait(job_id, timeout=600)
    t2 = time.time()
    if job.state != "succeeded":
        raise SystemExit(f"create {name} failed: {job.error}")
    ev = {e.step: e for e in client.store.events(job_id)}
    resumed = ev["resumed"]
    data = resumed.data
    return {
        ROWS[4]: _ms(t0, t1),
        ROWS[5]: _ms(job.submitted_at, ev["admitted"].ts),
        ROWS[6]: _ms(ev["admitted"].ts, ev["capture"].ts),
        ROWS[7]: _ms(ev["capture"].ts, resumed.ts),
        ROWS[8]: float(data.get("pause_ms") or 0),
        ROWS[9]: float(data.get("memory_save_ms") or 0),
        ROWS[10]: float(data.get("fsync_ms") or 0),
        ROWS[11]: _ms(resumed.ts, job.finished_at or resumed.ts),
        ROWS[12]: _ms(job.finished_at or t2, t2),
        ROWS[13]: _ms(t0, t2),
    }


def direct(client: Any, host: Any, dom: str, name: str) -> dict[str, float]:
    """The create's steps in this process, in the order the queue runs them."""
    from domsnap.validation import parse_model
    from schemas.models import CreateRequest, JobRecord
    from workers.engine import create
    from workers.engine.admit import admit

    t0 = time.perf_counter()
    owner, info = client.resolve(dom)
    t1 = time.perf_counter()
    now = time.time()
    req = parse_model(CreateRequest, {
        "job_id": str(uuidlib.uuid4()), "domain": info.uuid, "domain_name": info.name,
        "host": owner, "name": name, "submitted_at": now, "type": "internal",
        "requested_by": "bench"})
    t2 = time.perf_counter()
    client.store.claim_name(info.uuid, req.name, req.job_id)
    client.store.create_job(JobRecord.queued(req, now))
    t3 = time.perf_counter()
    plan = admit(host, req)
    if plan is None:
        raise SystemExit(f"direct create {name} not admitted: {client.job(req.job_id).error}")
    t4 = time.perf_counter()
    create.run_live(host, req, plan)
    t5 = time.perf_counter()
    return {ROWS[14]: _ms(t0, t1), ROWS[15]: _ms(t1, t2), ROWS[16]: _ms(t2, t3),
            ROWS[17]: _ms(t3, t4), ROWS[18]: _ms(t4, t5), ROWS[19]: _ms(t0, t5)}


def polling_celery_client(cluster: Any) -> Any:
    """A client that submits the way domsnap did before (Celery's send_task) and waits
    by polling every 100 ms (its job watch is refused pub/sub, as by an old ACL)."""
    import redis

    from domsnap.jobwatch import JobWatch

    class _NoPubSub:
        def pubsub(self, **kw: Any) -> Any:
            raise redis.exceptions.NoPermissionError("bench: polling, as before")

    c = cluster.client(enqueue="celery")
    c.store.watch_job = lambda job_id: JobWatch(_NoPubSub(), c.store.keys.job_notify(job_id))
    return c


def cli(env: dict[str, str], *args: str) -> tuple[float, float]:
    """(wall ms, CPU ms) of one CLI command: under load the wall is mostly waiting
    for a core, the CPU time (user + system of the process) is what it costs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "domsnap", *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    took = _ms(t0, time.perf_counter())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"domsnap {' '.join(args)} failed: {proc.stderr[-800:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return took, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round, 128 MiB guest")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--memory", type=int, default=None, help="guest MiB (default 256)")
    ap.add_argument("--no-write", action="store_true", help="print, leave the docs alone")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 7)
    memory = args.memory or (128 if args.quick else 256)
    where = machine()
    from domsnap.settings import Settings
    from tests.integration.cluster import Cluster
    from workers.host import build_host

    samples: dict[str, list[float]] = {k: [] for k in ROWS}
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dshops-") as tmp:
        cluster = Cluster(Path(tmp), suffix=uuidlib.uuid4().hex[:6])
        try:
            h = cluster.start_worker(f"hops-{cluster.suffix}")
            dom = cluster.create_domain(h.name, f"hops-{cluster.suffix}", guest=True,
                                        memory=memory)
            cluster.wait_inventory(dom)
            client = cluster.client()
            before = polling_celery_client(cluster)
            host = build_host(Settings(
                redis_url=h.env["DOMSNAP_REDIS_URL"], key_prefix=cluster.prefix, host=h.name,
                state_dir=h.state_dir, snapshot_roots=[h.images], driver="qemu"))
            env = cli_env(h.env, tmp)
            cli(env, "snapshot-create", "--help")  # bytecode compiled once
            # warm: the client's Celery app, the pools' first task, this process's imports
            through_client(client, dom.name, "warm-client")
            through_client(before, dom.name, "warm-before")
            direct(client, host, dom.name, "warm-direct")
            for i in range(runs):
                loads.append(load_now())
                wall, cpu = cli(env, "snapshot-create", "-n", f"cli{i}", dom.name)
                samples[ROWS[0]].append(wall)
                samples[ROWS[2]].append(cpu)
                wall, cpu = cli(env, "snapshot-create", "--help")
                samples[ROWS[1]].append(wall)
                samples[ROWS[3]].append(cpu)
                for k, v in through_client(client, dom.name, f"cl{i}").items():
                    samples[k].append(v)
                for k, v in direct(client, host, dom.name, f"dir{i}").items():
                    samples[k].append(v)
                wall, cpu = cli({**env, "DOMSNAP_ENQUEUE": "celery"}, "snapshot-create", "-n",
                                f"clc{i}", dom.name)
                samples[ROWS[20]].append(wall)
                samples[ROWS[21]].append(cpu)
                old_way = through_client(before, dom.name, f"old{i}")
                samples[ROWS[22]].append(old_way[ROWS[12]])
                samples[ROWS[23]].append(old_way[ROWS[13]])
        finally:
            for name in list(cluster.hosts):
                cluster.stop_worker(name)
            cluster.destroy_all()
            cluster.cleanup_redis()
    body, summary = report(samples, runs, memory, args.quick, where, loads)
    print("\n".join(body))
    if not args.no_write:
        write_with_history(DOC, HEADING, body, summary)
    return 0


def report(samples: dict[str, list[float]], runs: int, memory: int, quick: bool, where: str,
           loads: list[str]) -> tuple[list[str], str]:
    med = {k: statistics.median(v) for k, v in samples.items()}
    client_total, direct_total = med[ROWS[13]], med[ROWS[19]]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python -m bench.hops"
        f"{' --quick' if quick else ''} --runs {runs} --memory {memory}` on {where}; load at "
        f"the start of each round: {', '.join(loads)}. " + NOISE, "",
        f"One worker host (qemu driver), one real guest ({memory} MiB, two qcow2 disks), a "
        "memory + both disks internal snapshot each time; the CLI, the Python client and the "
        f"direct calls interleaved round by round, medians of {runs} (ms). The client rows "
        "come from the job's own timestamps (`submitted_at`, the `admitted`, `capture` and "
        "`resumed` events, `finished_at`); the pause, memory save and fsync from the "
        "`resumed` event's data. One untimed create through the client and one direct warm "
        "the caches first (the client's Celery app, the pools' first task).", "",
        "| step | median (ms) | min (ms) | max (ms) |", "| --- | --- | --- | --- |"]
    for k in ROWS:
        v = samples[k]
        lines.append(f"| {k} | {med[k]:.1f} | {min(v):.1f} | {max(v):.1f} |")
    queue = client_total - direct_total
    lines += ["", f"The queue (two Celery hops and the wait for the end) adds **{queue:.0f} "
              f"ms** to a create: {client_total:.0f} ms through the client against "
              f"{direct_total:.0f} ms called directly ({client_total / direct_total:.2f}x). "
              "The CLI adds its start-up on top.", "",
              "Against the way requests were sent and waited for before (rows `before:`, "
              "interleaved in the same rounds): the CLI's create "
              f"{med[ROWS[0]]:.0f} ms against {med[ROWS[20]]:.0f} ms "
              f"(**{med[ROWS[0]] / med[ROWS[20]]:.2f}x**; CPU {med[ROWS[2]]:.0f} against "
              f"{med[ROWS[21]]:.0f} ms, {med[ROWS[2]] / med[ROWS[21]]:.2f}x), the client's "
              f"{client_total:.0f} against {med[ROWS[23]]:.0f} ms "
              f"({client_total / med[ROWS[23]]:.2f}x), the event delivery {med[ROWS[12]]:.1f} "
              f"against {med[ROWS[22]]:.1f} ms. Now a request on a redis:// broker is one "
              "LPUSH of Celery's envelope (`domsnap/enqueue.py`: no Celery import, no "
              "producer set-up) and the waiter is woken by the job's notify channel "
              "(`domsnap/jobwatch.py`) instead of polling."]
    summary = (f"{time.strftime('%Y-%m-%d')}, {memory} MiB guest: CLI {med[ROWS[0]]:.0f} ms "
               f"({med[ROWS[2]]:.0f} ms CPU), "
               f"client {client_total:.0f} ms, direct {direct_total:.0f} ms (queue adds "
               f"{queue:.0f} ms); capture {med[ROWS[7]]:.0f} ms, pause {med[ROWS[8]]:.0f} ms, "
               f"fsync {med[ROWS[10]]:.0f} ms, event delivery {med[ROWS[12]]:.0f} ms; "
               f"before (Celery send + polling): CLI {med[ROWS[20]]:.0f} ms "
               f"({med[ROWS[21]]:.0f} ms CPU), client {med[ROWS[23]]:.0f} ms, event delivery "
               f"{med[ROWS[22]]:.0f} ms")
    return lines, summary


if __name__ == "__main__":
    raise SystemExit(main())
