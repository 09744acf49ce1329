"""Issue 8's bench row in the lab (``LAB_SUITE=bench-live``): the guest-visible pause of a
live memory capture (``xl -vvv migrate -s <recv.py>``, closing without "ready") against
``xl save -p`` + ``xl unpause``, on the same PV domU, per size and load.

The guest (no disks, so no device model) ticks every 0.1 s (``domsnap.tick=0.1
domsnap.disk=0``);
"dirty" adds ``domsnap.dirty=<MiB>``: a loop rewriting that much of its tmpfs. The pause
is the largest gap between consecutive tick lines in the operation's window
[start, end + 2 s], stamped by this process as it reads the console log every 10 ms
(labdom.ConsoleFollower; xenconsoled's own stamps have 1 s resolution); the guest's
uptime across the same gap is recorded too, and the largest gap of the 5 s before each
operation (the ticker's noise under emulation). Methods alternate per run, the first
method alternating between runs.

Knobs (environment): LAB_BENCH_SIZES (MiB, default "128,512"), LAB_BENCH_LOADS
("idle,dirty"), LAB_BENCH_RUNS (3), LAB_BENCH_DIRTY ("128:32,512:64": MiB dirtied per
pass per size). Results: ``OUT/bench/results.json`` (every run), read by
``lab/xen/bench_report.py`` on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labdom  # noqa: E402

RECV = str(Path(__file__).resolve().parent / "recv.py")
WORK = Path("/var/lib/lab/bench")


def env_list(name: str, default: str) -> list[str]:
    return [x for x in os.environ.get(name, default).split(",") if x]


class Bench:
    def __init__(self, out: Path, guest: Path) -> None:
        self.out = out / "bench"
        self.out.mkdir(parents=True, exist_ok=True)
        self.guest = guest
        self.rec = labdom.Recorder(out, "bench-live")
        self.runs: list[dict[str, Any]] = []
        self.sizes = [int(x) for x in env_list("LAB_BENCH_SIZES", "128,512")]
        self.loads = env_list("LAB_BENCH_LOADS", "idle,dirty")
        self.nruns = int(os.environ.get("LAB_BENCH_RUNS", "3"))
        self.dirty = {int(k): int(v) for k, v in
                      (x.split(":") for x in env_list("LAB_BENCH_DIRTY", "128:32,512:64"))}
        WORK.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, Any] = {"sizes": self.sizes, "loads": self.loads,
                                     "runs": self.nruns, "dirty_mib": self.dirty}

    def save(self) -> None:
        doc = {"meta": self.meta, "runs": self.runs}
        (self.out / "results.json").write_text(json.dumps(doc, indent=1))

    def machine(self) -> str:
        info = labdom.xl("info").stdout
        (self.out / "xl-info.txt").write_text(info)
        keys = {}
        for line in info.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                keys[k.strip()] = v.strip()
        cpu = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        self.meta.update({"xen_version": keys.get("xen_version"),
                          "xen_caps": keys.get("xen_caps"), "nr_cpus": keys.get("nr_cpus"),
                          "free_memory": keys.get("free_memory"), "dom0_cpu": cpu,
                          "dom0_kernel": platform.release()})
        self.save()
        return f"xen {keys.get('xen_version')}, free {keys.get('free_memory')} MiB, cpu {cpu}"

    # ------------------------------------------------------------ one operation

    def live(self, name: str, tag: str) -> dict[str, Any]:
        stream, log = WORK / f"{tag}.xl", self.out / f"{tag}.recv.json"
        cmd = " ".join(shlex.quote(a) for a in
                       ["python3", "-S", RECV, f"--out={stream}", f"--log={log}", "--"])
        r = labdom.xl("-vvv", "migrate", "-s", cmd, labdom.domid(name), "lab", timeout=1800)
        (self.out / f"{tag}.stderr").write_text(r.stderr)
        res: dict[str, Any] = {"rc": r.rc, "total_s": r.seconds, "t0": r.started,
                               "t1": r.ended,
                               "resumed": "Migration failed, resuming at sender." in r.stderr}
        try:
            rl = json.loads(log.read_text())
            recs = rl.get("records", [])
            pages = [x for x in recs if x.get("name") == "PAGE_DATA"]
            res.update({"recv_ok": rl.get("ok"), "recv_error": rl.get("error"),
                        "bytes": rl.get("bytes"), "page_data_records": len(pages),
                        "pages_sent": sum(x.get("pages", 0) for x in pages),
                        "first_byte_at": rl.get("first_byte_at"),
                        "libxl_end_at": rl.get("libxl_end_at"), "closed_at": rl.get("closed_at")})
            # the records in time: a gap before the last round shows where the suspend is
            times = [[x["name"], x["t"]] for x in recs if x.get("name") != "PAGE_DATA"]
            if pages:
                times.append(["PAGE_DATA-first", pages[0]["t"]])
                times.append(["PAGE_DATA-last", pages[-1]["t"]])
            res["record_times"] = sorted(times, key=lambda x: x[1])
        except (OSError, ValueError) as exc:
            res["recv_error"] = f"no receiver log: {exc}"
        stream.unlink(missing_ok=True)
        return res

    def save_p(self, name: str, tag: str) -> dict[str, Any]:
        path = WORK / f"{tag}.save"
        r = labdom.xl("save", "-p", name, str(path), timeout=1800)
        u = labdom.xl("unpause", name)
        res = {"rc": r.rc, "unpause_rc": u.rc, "save_s": r.seconds, "unpause_s": u.seconds,
               "total_s": round(r.seconds + u.seconds, 3), "t0": r.started, "t1": u.ended,
               "bytes": path.stat().st_size if path.exists() else None}
        (self.out / f"{tag}.stderr").write_text(r.stderr + u.stderr)
        path.unlink(missing_ok=True)
        return res

    def measure(self, con: labdom.ConsoleFollower, name: str, method: str,
                tag: str) -> dict[str, Any]:
        pre0 = time.monotonic()
        time.sleep(5)
        t0 = time.monotonic()
        res = self.live(name, tag) if method == "live" else self.save_p(name, tag)
        t1 = time.monotonic()
        time.sleep(2)
        before = [t for t in con.ticks(pre0) if t[0] < t0]
        base = labdom.largest_gap(before)
        window = [t for t in con.ticks(t0) if t[0] <= t1 + 2]
        # the tick just before the operation opens the window, so a pause from t0 counts
        gap = labdom.largest_gap(before[-1:] + window)
        res.update({"method": method, "pause_s": gap.get("host_s"), "pause": gap,
                    "baseline_gap_s": base.get("host_s"), "ticks_in_window": len(window),
                    "flags_after": labdom.state_flags(name)})
        return res

    # ------------------------------------------------------------ the plan

    def config(self, size: int, load: str) -> str:
        con: labdom.ConsoleFollower | None = None
        name = f"bench{size}{load[0]}"
        extra = "domsnap.tick=0.1 domsnap.disk=0"
        if load == "dirty":
            extra += f" domsnap.dirty={self.dirty.get(size, 64)}"
        # no disks (the guest writes none here): no device model, so nothing in dom0 but
        # xl and the receiver, and no device-model start-up timeout under load
        cfg, r = labdom.make_domain(name, self.guest, size, extra, disks=0)
        if r.rc != 0:
            raise RuntimeError(f"xl create {cfg}: rc={r.rc} {r.stderr.strip()}")
        try:
            con = labdom.ConsoleFollower(name)
            con.start()
            if not con.wait_ticks(20, 0, 600):
                raise RuntimeError(f"{name}: no 20 ticks in 600 s")
            time.sleep(5 if load == "idle" else 20)  # the dirty loop warms up
            done = []
            for i in range(self.nruns):
                order = ["live", "save"] if i % 2 == 0 else ["save", "live"]
                for method in order:
                    tag = f"{name}-{i}-{method}"
                    res = self.measure(con, name, method, tag)
                    res.update({"size_mib": size, "load": load, "run": i, "uptime":
                                Path("/proc/loadavg").read_text().strip()})
                    self.runs.append(res)
                    self.save()
                    done.append(f"{method}:{res['pause_s']}")
                    # every run on the console too, in case out/ is never read back
                    brief = {k: v for k, v in res.items() if k != "record_times"}
                    print("LAB-BENCH-JSON " + json.dumps(brief, separators=(",", ":")),
                          flush=True)
                    print(f"LAB-BENCH {tag} pause={res['pause_s']}s total={res['total_s']}s "
                          f"bytes={res.get('bytes')} rc={res['rc']} flags={res['flags_after']}",
                          flush=True)
                    if res["flags_after"] in ("absent",) or "p" in res["flags_after"]:
                        raise RuntimeError(f"{name} is {res['flags_after']} after {tag}")
            return f"{name}: " + " ".join(done)
        finally:
            if con is not None:
                con.stop.set()
            labdom.xl("destroy", name)
            for f in labdom.IMAGES.glob(f"{name}-*.qcow2"):
                f.unlink()

    def run(self) -> int:
        plan = [(f"{s}-{load}", s, load) for s in self.sizes for load in self.loads]
        self.rec.doc["facts"].setdefault("plan", []).extend(
            ["bench-live:machine"] + [f"bench-live:{n}" for n, _, _ in plan])
        self.rec.step("machine", self.machine)
        for tag, size, load in plan:
            self.rec.step(tag, lambda s=size, ld=load: self.config(s, ld))
        self.meta["finished_at"] = time.time()
        self.save()
        return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--guest", type=Path, required=True)
    args = ap.parse_args()
    return Bench(args.out, args.guest).run()


if __name__ == "__main__":
    sys.exit(main())
