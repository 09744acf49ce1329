"""What one create costs the host, without the queue: the fleet benchmark's "why".

``python -m bench.jobcost [--jobs N] [--profile]``: a null-driver host built in this
process on a private redis-server; N running domains of one qcow2 disk; each create is
admitted (:func:`workers.engine.admit.admit`) and run (:func:`create.run_live`)
directly. Per job: wall, CPU of this process and of its qemu-img children, Redis round
trips (each request sent on a connection: a pipeline is one), Redis commands, fsyncs.
``--profile`` adds the functions that take the most time (cProfile).
Used by bench/fleet.py (its report) and on its own.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from bench.harness import PrivateRedis


def measure(jobs: int = 50, *, profile: bool = False, trace: bool = False) -> dict[str, Any]:
    import redis.connection

    from domsnap.settings import Settings
    from domsnap.validation import parse_model
    from domsnap.xlcfg import parse_domain_config
    from schemas.models import CreateRequest, JobRecord
    from workers.engine import create
    from workers.engine.admit import admit
    from workers.host import build_host

    with tempfile.TemporaryDirectory(prefix="dscost-") as tmp:
        work = Path(tmp)
        red = PrivateRedis(work / "redis")
        try:
            host = build_host(Settings(redis_url=red.url, key_prefix="jobcost", host="cost-01",
                                       state_dir=work / "state", driver="null",
                                       snapshot_roots=[work / "images"], space_reserve_mb=0))
            (work / "images").mkdir()
            template = work / "template.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(template), "16M"],
                           check=True, timeout=60)
            drv: Any = host.driver
            reqs = []
            for i in range(jobs):
                disk = work / "images" / f"d{i}.qcow2"
                shutil.copyfile(template, disk)
                cfg = drv.define(parse_domain_config(
                    f'name = "cost-d{i}"\nmemory = 16\nvcpus = 1\n'
                    f'disk = [ "{disk},qcow2,xvda,rw" ]\n'), state="running")
                now = time.time()
                reqs.append(parse_model(CreateRequest, {
                    "job_id": str(uuidlib.uuid4()), "domain": cfg.uuid, "domain_name": cfg.name,
                    "host": "cost-01", "name": "c1", "submitted_at": now, "type": "internal",
                    "requested_by": "bench"}))
            for req in reqs:  # what the client did
                host.store.claim_name(req.domain, req.name, req.job_id)
                host.store.create_job(JobRecord.queued(req, req.submitted_at or 0))
            client_cost = _client_cost(host, red, [r.domain for r in reqs])
            counts = {"trips": 0, "fsyncs": 0}
            callers: dict[str, int] = {}
            real_send = redis.connection.AbstractConnection.send_packed_command
            real_fsync = os.fsync

            def _caller(kind: str) -> None:
                if not trace:
                    return
                import traceback

                frames = [f for f in traceback.extract_stack()[:-2]
                          if "/site-packages/" not in f.filename and "/bench/" not in f.filename
                          and "/lib/python" not in f.filename]
                chain = " < ".join(f"{Path(f.filename).stem}.{f.name}" for f in frames[-1:-4:-1])
                callers[f"{kind}: {chain}"] = callers.get(f"{kind}: {chain}", 0) + 1

            def send(self: Any, command: Any, check_health: bool = True) -> None:
                counts["trips"] += 1
                _caller("redis")
                real_send(self, command, check_health)

            def fsync(fd: int) -> None:
                counts["fsyncs"] += 1
                _caller("fsync")
                real_fsync(fd)

            redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
            os.fsync = fsync
            prof = cProfile.Profile() if profile else None
            before = red.commands()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0, p0 = time.perf_counter(), time.process_time()
            try:
                if prof:
                    prof.enable()
                for req in reqs:
                    plan = admit(host, req)
                    assert plan is not None, host.store.get_job(req.job_id).error
                    create.run_live(host, req, plan)
                if prof:
                    prof.disable()
            finally:
                redis.connection.AbstractConnection.send_packed_command = real_send  # type: ignore[method-assign]
                os.fsync = real_fsync
            wall, cpu = time.perf_counter() - t0, time.process_time() - p0
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = red.commands()
            children = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
            commands = sum(after.values()) - sum(before.values())
            failed = [r for r in reqs if host.store.get_job(r.job_id).state != "succeeded"]
            if failed:
                raise SystemExit(f"{len(failed)} direct creates failed: "
                                 f"{host.store.get_job(failed[0].job_id).error}")
            out: dict[str, Any] = {
                "jobs": jobs, "wall_ms": wall / jobs * 1000, "cpu_ms": cpu / jobs * 1000,
                "children_cpu_ms": children / jobs * 1000,
                "trips": counts["trips"] / jobs, "commands": commands / jobs,
                "fsyncs": counts["fsyncs"] / jobs, **client_cost}
            if trace:
                out["callers"] = "\n".join(f"{n / jobs:5.2f}  {k}" for k, n in sorted(
                    callers.items(), key=lambda kv: -kv[1]))
            if prof:
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
                out["profile"] = buf.getvalue()
            return out
        finally:
            red.stop()


def _client_cost(host: Any, red: PrivateRedis, domains: list[str]) -> dict[str, float]:
    """What ``Client.create`` costs per call (resolve, validation, claim, job record,
    send_task): its wall, CPU and round trips, on a name of its own (the messages stay
    in the host's queue, which nobody consumes here)."""
    import redis.connection

    from domsnap.client import Client
    from domsnap.settings import Settings
    from workers.runtime import publish

    publish(host)  # the inventory the client resolves the domains from
    client = Client(Settings(redis_url=red.url, key_prefix="jobcost"))
    client.create(domains[0], name="warm")  # the Celery app and connections
    trips = [0]
    real_send = redis.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        trips[0] += 1
        real_send(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    try:
        t0, p0 = time.perf_counter(), time.process_time()
        for uuid in domains:
            client.create(uuid, name="client")
        wall, cpu = time.perf_counter() - t0, time.process_time() - p0
    finally:
        redis.connection.AbstractConnection.send_packed_command = real_send  # type: ignore[method-assign]
    n = len(domains)
    return {"client_wall_ms": wall / n * 1000, "client_cpu_ms": cpu / n * 1000,
            "client_trips": trips[0] / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--trace", action="store_true", help="who makes each round trip, fsync")
    args = ap.parse_args(argv)
    res = measure(args.jobs, profile=args.profile, trace=args.trace)
    for k, v in res.items():
        if k in ("profile", "callers"):
            print(v)
        else:
            print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
