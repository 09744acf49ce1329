"""Issue 8's captures on the real xl (``LAB_SUITE=capture``), by hand-like steps in one
process: a PV domU of the lab's guest (128 MiB, two qcow2 disks, ticking each second),
then

- ``live-vvv``: ``xl -vvv migrate -s "<recv.py>" DOMID lab``: recv.py writes the
  banner, captures the stream to the libxl END, fsyncs, runs ``xl list`` in the window,
  closes its stdout with no "ready"; xl's stdout/stderr/exit code, ``xl list`` after,
  the guest ticking on, the domain's xl-<name>.log (the monitor exiting at the suspend)
- ``live-quiet``: the same without ``-vvv``
- ``kill-mid-stream``: the receiver SIGKILLs itself after 16 MiB; then ``live-after-kill``
- ``bad-banner``: a receiver answering with a wrong banner of the right length
- ``paused``: ``xl migrate`` of a domain that ``xl pause`` paused
- ``save-p``: ``xl -vvv save -p`` of the same domain (+ ``xl unpause``), its stream summary
- ``restore``: ``xl destroy`` + ``xl -vvv restore`` of the stream captured by live-vvv:
  the guest counts on from the moment of the suspend

Everything lands in ``OUT/capture/`` (text, plus ``*.bin`` stream head/tail that the host
turns into hex fixtures). Each case records what happened; none stops the others.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labdom  # noqa: E402
import recv  # noqa: E402

NAME = "capdom"
RECV = str(Path(__file__).resolve().parent / "recv.py")
CAP = Path("/var/lib/lab/cap")


class Capture:
    def __init__(self, out: Path, guest: Path) -> None:
        self.out = out / "capture"
        self.out.mkdir(parents=True, exist_ok=True)
        self.guest = guest
        self.rec = labdom.Recorder(out, "capture")
        self.con: labdom.ConsoleFollower | None = None
        self.facts: dict[str, Any] = {}
        CAP.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ helpers

    def write(self, name: str, text: str) -> None:
        (self.out / name).write_text(text)

    def save_run(self, case: str, r: labdom.Run) -> dict[str, Any]:
        self.write(f"{case}.stdout", r.stdout)
        self.write(f"{case}.stderr", r.stderr)
        meta = {"argv": r.argv, "rc": r.rc, "seconds": r.seconds, "started": r.started,
                "ended": r.ended}
        self.write(f"{case}.rc", f"{r.rc}\n")
        return meta

    def xl_log(self, case: str) -> None:
        src = Path(f"/var/log/xen/xl-{NAME}.log")
        if src.exists():
            shutil.copyfile(src, self.out / f"{case}.xl-{NAME}.log")

    def after(self, case: str, meta: dict[str, Any], ticks: int = 3) -> str:
        """xl list right after, the guest ticking on (or not), xl list again."""
        assert self.con is not None
        l1 = labdom.xl("list")
        since = time.monotonic()
        ticking = self.con.wait_ticks(ticks, since, 180)
        l2 = labdom.xl("list")
        self.write(f"{case}.list-after.txt", l1.stdout + l1.stderr)
        self.write(f"{case}.list-after-ticks.txt", l2.stdout + l2.stderr)
        meta["ticking_after"] = ticking
        meta["ticks_after"] = [t[2] for t in self.con.ticks(since)][:ticks]
        meta["flags_after"] = labdom.state_flags(NAME)
        self.xl_log(case)
        self.facts[case] = meta
        self.save_facts()
        return (f"rc={meta['rc']} in {meta['seconds']}s; then {meta['flags_after']}, "
                f"ticking={ticking} {meta['ticks_after']}")

    def save_facts(self) -> None:
        self.write("facts.json", json.dumps(self.facts, indent=1))

    def migrate(self, case: str, verbose: bool, mode: str = "normal",
                during: str | None = "xl list") -> labdom.Run:
        opts = [f"--out={CAP / (case + '.xl')}", f"--log={self.out / (case + '.recv.json')}",
                f"--mode={mode}"]
        if during:
            opts.append(f"--during={during}")
        cmd = " ".join(shlex.quote(a) for a in ["python3", "-S", RECV, *opts, "--"])
        argv = (["-vvv"] if verbose else []) + ["migrate", "-s", cmd, labdom.domid(NAME), "lab"]
        return labdom.xl(*argv, timeout=1200)

    def stream_fixture(self, case: str, path: Path) -> dict[str, Any]:
        """Summary of a whole stream file, and its head and tail as binary files."""
        res = recv.summarize(str(path))
        self.write(f"{case}.summary.txt", recv.summary_text(res))
        self.write(f"{case}.config.json", res["config"])
        pages = [r for r in res["records"] if r["layer"] == "libxc" and r["name"] == "PAGE_DATA"]
        data = path.read_bytes() if path.stat().st_size < (1 << 30) else b""
        if pages and data:
            head_end = pages[0]["offset"] + 8 + 64
            last = pages[-1]
            tail_start = last["offset"] + 8 + ((last["length"] + 7) & ~7)
            (self.out / f"{case}.head.bin").write_bytes(data[:head_end])
            (self.out / f"{case}.tail.bin").write_bytes(data[tail_start:])
        return {"bytes": res["bytes"], "records": len(res["records"]),
                "page_data": len(pages), "pages": sum(r.get("pages", 0) for r in pages),
                "trailing": res["trailing_bytes"]}

    # ------------------------------------------------------------ cases

    def setup(self) -> str:
        cfg, r = labdom.make_domain(NAME, self.guest, 128, "domsnap.tick=1", disks=2)
        if r.rc != 0 and any(s in r.stderr for s in labdom.DM_TIMEOUT):
            # no disks, no device model: the stream is the same for a PV domain (libxl
            # saves no device-model state for PV), only the EMULATOR records could differ
            self.write("setup-with-disks.stderr", r.stderr)
            cfg, r = labdom.make_domain(NAME, self.guest, 128, "domsnap.tick=1", disks=0)
            self.facts["setup"] = "no disks: xl create with qdisk disks timed out 3 times"
        if r.rc != 0:
            raise RuntimeError(f"xl create {cfg}: rc={r.rc} {r.stderr.strip()}")
        self.con = labdom.ConsoleFollower(NAME)
        self.con.start()
        if not self.con.wait_ticks(2, 0, 600):
            raise RuntimeError("the guest printed no 2 ticks in 600 s")
        self.write("xl-info.txt", labdom.xl("info").stdout)
        self.xl_log("before")
        return f"xl create {r.seconds}s; ticking {[t[2] for t in self.con.ticks()][-2:]}"

    def live(self, case: str, verbose: bool) -> str:
        assert self.con is not None
        before = [t[2] for t in self.con.ticks()][-1:]
        r = self.migrate(case, verbose)
        meta = self.save_run(case, r)
        meta["tick_before"] = before
        try:
            log = json.loads((self.out / f"{case}.recv.json").read_text())
            meta["recv"] = {k: log.get(k) for k in ("ok", "error", "argv_from_xl", "banner_at",
                                                    "first_byte_at", "libxl_end_at",
                                                    "fsynced_at", "closed_at", "exit_at",
                                                    "bytes")}
            if log.get("during"):
                self.write(f"{case}.list-during.txt", log["during"]["stdout"]
                           + log["during"]["stderr"])
            # the last tick the guest printed before the stream's end: the snapshot's moment
            end = log.get("libxl_end_at") or 0
            meta["last_tick_before_end"] = max(
                (t[2] for t in self.con.ticks() if t[1] <= end), default=None)
        except (OSError, ValueError) as exc:
            meta["recv"] = f"no receiver log: {exc}"
        stream = CAP / f"{case}.xl"
        if stream.exists() and stream.stat().st_size:
            try:
                meta["stream"] = self.stream_fixture(case, stream)
            except recv.StreamError as exc:
                meta["stream"] = f"{exc}"
        return self.after(case, meta)

    def kill_mid_stream(self) -> str:
        r = self.migrate("kill-mid-stream", True, mode=f"die-after={16 << 20}", during=None)
        return self.after("kill-mid-stream", self.save_run("kill-mid-stream", r))

    def bad_banner(self) -> str:
        r = self.migrate("bad-banner", True, mode="badbanner", during=None)
        return self.after("bad-banner", self.save_run("bad-banner", r))

    def paused(self) -> str:
        p = labdom.xl("pause", NAME)
        lp = labdom.xl("list")
        self.write("paused.list-before.txt", lp.stdout)
        r = self.migrate("paused", True)
        meta = self.save_run("paused", r)
        meta["pause_rc"] = p.rc
        l1 = labdom.xl("list")
        self.write("paused.list-after-migrate.txt", l1.stdout + l1.stderr)
        meta["flags_after_migrate"] = labdom.state_flags(NAME)
        u = labdom.xl("unpause", NAME)
        meta["unpause"] = {"rc": u.rc, "stderr": u.stderr}
        stream = CAP / "paused.xl"
        if stream.exists() and stream.stat().st_size:
            try:
                meta["stream"] = self.stream_fixture("paused", stream)
            except recv.StreamError as exc:
                meta["stream"] = f"{exc}"
        return self.after("paused", meta)

    def save_p(self) -> str:
        path = CAP / "save-p.xl"
        r = labdom.xl("-vvv", "save", "-p", NAME, str(path), timeout=1200)
        meta = self.save_run("save-p", r)
        l1 = labdom.xl("list")
        self.write("save-p.list-after-save.txt", l1.stdout + l1.stderr)
        u = labdom.xl("unpause", NAME)
        meta["unpause"] = {"rc": u.rc, "seconds": u.seconds}
        if path.exists():
            meta["stream"] = self.stream_fixture("save-p", path)
        return self.after("save-p", meta)

    def restore(self) -> str:
        assert self.con is not None
        stream = CAP / "live-vvv.xl"
        want = self.facts.get("live-vvv", {}).get("last_tick_before_end")
        d = labdom.xl("destroy", NAME)
        time.sleep(2)
        since = time.monotonic()
        r = labdom.xl("-vvv", "restore", str(stream), timeout=1200)
        meta = self.save_run("restore", r)
        meta["destroy_rc"] = d.rc
        meta["snapshot_tick"] = want
        ok = self.con.wait_ticks(2, since, 300)
        got = [t[2] for t in self.con.ticks(since)]
        meta["restored_ticks"] = got[:5]
        summary = self.after("restore", meta)
        if r.rc != 0 or not ok:
            raise RuntimeError(f"restore failed: {summary}")
        if want is not None and got and got[0] not in (want + 1, want + 2):
            raise RuntimeError(f"restored guest counts on from {got[0]}, snapshot tick {want}")
        return f"{summary}; snapshot tick {want} -> restored {got[:3]}"

    def run(self) -> int:
        plan = [("setup", self.setup),
                ("live-vvv", lambda: self.live("live-vvv", True)),
                ("live-quiet", lambda: self.live("live-quiet", False)),
                ("kill-mid-stream", self.kill_mid_stream),
                ("live-after-kill", lambda: self.live("live-after-kill", False)),
                ("bad-banner", self.bad_banner),
                ("paused", self.paused),
                ("save-p", self.save_p),
                ("restore", self.restore)]
        self.rec.doc["facts"].setdefault("plan", []).extend(f"capture:{n}" for n, _ in plan)
        ok = self.rec.step("setup", self.setup)
        for name, fn in plan[1:]:
            if not ok:
                break
            self.rec.step(name, fn)
        # the domain's logs as they are at the end
        for f in Path("/var/log/xen").glob(f"*{NAME}*.log"):
            shutil.copyfile(f, self.out / f"final.{f.name}")
        labdom.xl("destroy", NAME)
        for f in CAP.glob("*.xl"):
            f.unlink()
        return 0 if all(s["ok"] for s in self.rec.doc["steps"]) else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--guest", type=Path, required=True)
    args = ap.parse_args()
    return Capture(args.out, args.guest).run()


if __name__ == "__main__":
    sys.exit(main())
