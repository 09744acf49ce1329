"""domsnap's LVM backend (``workers.block.lvm.Lvm`` with the real SubprocessRunner) on
dom0's real LVM, with no worker (``LAB_SUITE=lvm-direct``; the worker alone took over
17 minutes to start at host load ~17): the commands the xl driver's ``lvm`` strategy
runs, on a VG on a loop device, with a PV domU whose xvda is the LV on blkback:
probe, create_snapshot while the domain runs on it, revert (lvconvert --merge) with the
domain destroyed, the domain started again reading the snapshot-time counter back from
the merged LV, remove; and the 100%ORIGIN fact of lvmsteps.py. Run with the domsnap
venv's Python (it imports domsnap).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labdom  # noqa: E402

VG, LV = "labvg", "lvdom"
LVDEV = f"/dev/{VG}/{LV}"
NAME = "lvmdom"


def sh(*argv: str, check: bool = True) -> labdom.Run:
    r = labdom.run(list(argv), timeout=600)
    if check and r.rc != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.rc}: {r.stderr.strip()[:400]}")
    return r


def lvs() -> str:
    return sh("lvs", "-a", "--units", "m", "-o",
              "lv_name,lv_attr,lv_size,origin,data_percent", VG, check=False).stdout


class Direct:
    def __init__(self, out: Path, guest: Path) -> None:
        from workers.block.lvm import Lvm
        from workers.hostio.runner import SubprocessRunner

        self.out = out / "lvm"
        self.out.mkdir(parents=True, exist_ok=True)
        self.guest = guest
        self.rec = labdom.Recorder(out, "lvm-direct")
        self.lvm = Lvm(SubprocessRunner())
        self.facts: dict[str, Any] = {}
        self.con: labdom.ConsoleFollower | None = None

    def save(self) -> None:
        (self.out / "facts.json").write_text(json.dumps(self.facts, indent=1))

    def setup(self) -> str:
        mods = {m: sh("modprobe", m, check=False).rc for m in ("dm-mod", "dm-snapshot", "loop")}
        targets = sh("dmsetup", "targets", check=False).stdout
        img = labdom.IMAGES.parent / "lvm" / "pv.img"
        img.parent.mkdir(parents=True, exist_ok=True)
        with img.open("wb") as fh:
            fh.truncate(1 << 30)
        loop = sh("losetup", "--find", "--show", str(img)).stdout.strip()
        sh("pvcreate", "--yes", loop)
        sh("vgcreate", "--yes", VG, loop)
        sh("lvcreate", "--yes", "-L", "64M", "-n", LV, VG)
        self.facts["setup"] = {"modules": mods, "dm_targets": targets, "loop": loop,
                               "lvm_version": sh("lvm", "version", check=False).stdout,
                               "lvs": lvs()}
        self.save()
        return f"modprobe {mods}; dm targets {targets.split()[::3]}; VG on {loop}"

    def cow_fact(self) -> str:
        sh("lvcreate", "--yes", "-L", "32M", "-n", "cowtest", VG)
        made = sh("lvcreate", "--yes", "--snapshot", "--extents", "100%ORIGIN",
                  "--name", "cowtest.snap", f"{VG}/cowtest")
        before = lvs()
        dd = sh("dd", "if=/dev/urandom", f"of=/dev/{VG}/cowtest", "bs=1M", "count=32",
                "oflag=direct", check=False)
        sh("sync")
        snap = sh("lvs", "--noheadings", "--units", "b", "-o",
                  "lv_attr,lv_size,data_percent", f"{VG}/cowtest.snap", check=False)
        after = lvs()
        sh("lvremove", "--yes", f"{VG}/cowtest.snap", check=False)
        sh("lvremove", "--yes", f"{VG}/cowtest", check=False)
        attr = (snap.stdout.split() or ["?"])[0]
        valid = len(attr) >= 5 and attr[4] not in ("I", "S")
        self.facts["cow_100_origin"] = {
            "lvcreate": made.stdout + made.stderr, "before": before, "after": after,
            "dd_rc": dd.rc, "dd_stderr": dd.stderr[-300:], "snap": snap.stdout.strip(),
            "snap_stderr": snap.stderr.strip(), "valid": valid}
        self.save()
        return (f"32 MiB origin fully rewritten under a 100%ORIGIN snapshot: "
                f"{'valid' if valid else 'INVALID'} ({snap.stdout.strip()})")

    def domu(self) -> str:
        cfg = labdom.IMAGES / f"{NAME}.cfg"
        labdom.make_domain(NAME, self.guest, 128, "domsnap.tick=1", disks=0)  # kernel files
        labdom.xl("destroy", NAME)
        cfg.write_text("\n".join([
            f'name = "{NAME}"', 'type = "pv"', "memory = 128", "vcpus = 1",
            f'kernel = "{labdom.IMAGES / "vmlinuz"}"',
            f'ramdisk = "{labdom.IMAGES / "initramfs.cpio.gz"}"',
            'extra = "console=hvc0 quiet domsnap.tick=1"',
            f'disk = [ "format=raw, vdev=xvda, access=rw, backendtype=phy, target={LVDEV}" ]',
            ""]))
        self.con = labdom.ConsoleFollower(NAME)
        self.con.start()
        r = labdom.create(NAME, cfg)
        if r.rc != 0:
            raise RuntimeError(f"xl create: {r.stderr.strip()[-400:]}")
        if not self.con.wait_ticks(4, 0, 600):
            raise RuntimeError("no 4 ticks of the guest on its LV")
        return f"ticks {[t[2] for t in self.con.ticks()]}; xl list -l backend: " + \
            ("phy" if '"phy"' in labdom.xl("list", "-l", NAME).stdout else "?")

    def snapshot(self) -> str:
        assert self.con is not None
        origin = self.lvm.probe(LVDEV)
        if origin is None:
            raise RuntimeError(f"probe: {LVDEV} is no LV?")
        labdom.xl("pause", NAME)  # as the driver: the LVM snapshot while the domain is paused
        last = self.con.ticks()[-1][2]
        t0 = time.monotonic()
        snap = self.lvm.create_snapshot(origin, "l1")
        took = time.monotonic() - t0
        labdom.xl("unpause", NAME)
        self.facts["snapshot"] = {"origin": str(origin), "snap": str(snap), "last_tick": last,
                                  "lvcreate_s": round(took, 2), "lvs": lvs()}
        self.save()
        return f"{snap.path} (origin {snap.origin}) in {took:.1f}s while paused at tick {last}"

    def revert(self) -> str:
        assert self.con is not None
        want = self.facts["snapshot"]["last_tick"]
        if not self.con.wait_ticks(3, time.monotonic(), 300):
            raise RuntimeError("guest stopped ticking after the snapshot")
        before = self.con.ticks()[-1][2]
        labdom.xl("destroy", NAME)
        time.sleep(3)
        origin = self.lvm.probe(LVDEV)
        assert origin is not None
        t0 = time.monotonic()
        self.lvm.revert(origin, "l1")
        took = time.monotonic() - t0
        after_lvs = lvs()
        since = time.monotonic()
        r = labdom.create(NAME, labdom.IMAGES / f"{NAME}.cfg")
        if r.rc != 0:
            raise RuntimeError(f"xl create after revert: {r.stderr.strip()[-400:]}")
        if not self.con.wait_ticks(2, since, 600):
            raise RuntimeError("no ticks after the revert")
        first = self.con.ticks(since)
        line = [ln for _, _, ln in self.con.lines if "DOMSNAP-TICK n=1 " in ln][-1:]
        self.facts["revert"] = {"want_disk": want, "tick_before_destroy": before,
                                "merge_s": round(took, 2), "lvs_after": after_lvs,
                                "first_ticks": [t[2] for t in first], "first_line": line}
        self.save()
        disk = int(line[0].split("disk=")[1].split()[0]) if line else None
        if disk is None or not want - 1 <= disk <= want:
            raise RuntimeError(f"fresh boot read disk={disk} from the merged LV; the snapshot "
                               f"was taken at tick {want} (guest had reached {before})")
        return (f"merge {took:.1f}s (snapshot taken again); fresh boot reads {disk} from the "
                f"LV (snapshot at tick {want}, guest was at {before})")

    def remove(self) -> str:
        origin = self.lvm.probe(LVDEV)
        assert origin is not None
        self.lvm.remove(self.lvm.snapshot_path(origin, "l1"))
        left = lvs()
        self.facts["remove"] = left
        self.save()
        if ".ds.l1" in left:
            raise RuntimeError(f"snapshot still there: {left}")
        return "snapshot LV removed; left: " + " ".join(left.split())

    def run(self) -> int:
        plan = [("setup", self.setup), ("cow-100-origin", self.cow_fact), ("domu", self.domu),
                ("snapshot", self.snapshot), ("revert", self.revert), ("remove", self.remove)]
        self.rec.doc["facts"].setdefault("plan", []).extend(f"lvm-direct:{n}" for n, _ in plan)
        for name, fn in plan:
            if not self.rec.step(name, fn) and name in ("setup", "domu", "snapshot"):
                break
        labdom.xl("destroy", NAME)
        return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--guest", type=Path, required=True)
    args = ap.parse_args()
    return Direct(args.out, args.guest).run()


if __name__ == "__main__":
    sys.exit(main())
