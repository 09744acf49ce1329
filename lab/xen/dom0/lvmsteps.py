"""The LVM cycle of the lab's smoke process (``LAB_SUITE=lvm``; issue 9: "prove the LVM
strategy"): a volume group on a loop device in dom0, a PV domU whose xvda is an LVM
volume on blkback (``phy``, raw) and whose xvdb is a qcow2 on qdisk, and through
domsnap's client: a disk-only and a memory snapshot (xvda external = an LVM snapshot,
xvdb internal), revert of the memory one (the guest counts on from the snapshot, its
xvda, read back from the merged LV, holds the previous tick), revert of the disk-only
one with ``start=running`` (a fresh boot reads the snapshot-time counter from the
merged LV), and both deletes (the snapshot LVs gone).

Also a fact with no domsnap in it: what a ``100%ORIGIN`` snapshot does when its whole
origin is rewritten (does the COW space hold, or does the snapshot go invalid).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Any

import smoke
from smoke import IMAGES, StepFailed, tail, wait_ticks

if TYPE_CHECKING:
    from collections.abc import Callable

VG = "labvg"
LV = "lvdom"
LVDEV = f"/dev/{VG}/{LV}"
PV_IMG = IMAGES.parent / "lvm" / "pv.img"
NAME = "lvmdom"


def sh(*argv: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, check=False)
    if check and p.returncode != 0:
        raise StepFailed(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()[:400]}",
                         {"stdout": p.stdout, "stderr": p.stderr})
    return p


def lvs() -> str:
    return sh("lvs", "-a", "--units", "m", "-o",
              "lv_name,lv_attr,lv_size,origin,data_percent,lv_path", VG, check=False).stdout


class LvmSteps:
    def __init__(self, sm: smoke.Smoke) -> None:
        self.sm = sm

    def plan(self) -> list[tuple[str, Callable[[], str | tuple[str, dict[str, Any]]]]]:
        disks = [{"vdev": "xvda", "type": "external"}, {"vdev": "xvdb", "type": "internal"}]
        return [
            ("lvm-setup", self.setup),
            ("lvm-cow-100-origin", self.cow_fact),
            ("lvm-domu-create", self.domu_create),
            ("lvm-create-disk-only", lambda: self.create("l-disk", True, disks)),
            ("lvm-create-memory", lambda: self.create("l-mem", False, disks)),
            ("lvm-list", lambda: self.sm.listing(("l-disk", "l-mem"), "l-mem")),
            ("lvm-revert-memory", lambda: self.checked(self.sm.revert, "l-mem")),
            ("lvm-revert-disk-only", self.revert_disk_only),
            ("lvm-delete-l-mem", lambda: self.checked(self.sm.delete, "l-mem")),
            ("lvm-delete-l-disk", lambda: self.checked(self.sm.delete, "l-disk")),
        ]

    def checked(self, fn: Callable[[str], tuple[str, dict[str, Any]]],
                name: str) -> tuple[str, dict[str, Any]]:
        detail, data = fn(name)
        data["lvs"] = lvs()
        return detail, data

    def setup(self) -> tuple[str, dict[str, Any]]:
        mods = {}
        for m in ("dm-mod", "dm-snapshot", "loop"):
            mods[m] = sh("modprobe", m, check=False).returncode
        misc = open("/proc/misc").read()
        targets = sh("dmsetup", "targets", check=False).stdout
        if "device-mapper" not in misc or "snapshot" not in targets:
            raise StepFailed(f"no device-mapper snapshots in dom0 (modprobe {mods}; "
                             f"targets: {targets.strip()})")
        PV_IMG.parent.mkdir(parents=True, exist_ok=True)
        with PV_IMG.open("wb") as fh:
            fh.truncate(1 << 30)
        loop = sh("losetup", "--find", "--show", str(PV_IMG)).stdout.strip()
        sh("pvcreate", "--yes", loop)
        sh("vgcreate", "--yes", VG, loop)
        sh("lvcreate", "--yes", "-L", "64M", "-n", LV, VG)
        version = sh("lvm", "version", check=False).stdout
        self.sm.facts["lvm"] = {"loop": loop, "modules": mods, "version": version,
                                "dm_targets": targets}
        return (f"VG {VG} on {loop} (1 GiB file), LV {LVDEV} 64 MiB; dm targets "
                f"{' '.join(t.split()[0] for t in targets.splitlines())}",
                {"lvs": lvs(), "version": version, "modules": mods})

    def cow_fact(self) -> tuple[str, dict[str, Any]]:
        """Rewrite a whole 32 MiB origin under a 100%ORIGIN snapshot: does it hold?"""
        sh("lvcreate", "--yes", "-L", "32M", "-n", "cowtest", VG)
        made = sh("lvcreate", "--yes", "--snapshot", "--extents", "100%ORIGIN",
                  "--name", "cowtest.snap", f"{VG}/cowtest")
        before = lvs()
        dd = sh("dd", "if=/dev/urandom", f"of=/dev/{VG}/cowtest", "bs=1M", "count=32",
                "oflag=direct", check=False, timeout=600)
        sh("sync")
        after = lvs()
        attr = sh("lvs", "--noheadings", "-o", "lv_attr,data_percent,lv_size,snap_percent",
                  "--units", "b", f"{VG}/cowtest.snap", check=False)
        sh("lvremove", "--yes", f"{VG}/cowtest.snap", check=False)
        sh("lvremove", "--yes", f"{VG}/cowtest", check=False)
        fields = attr.stdout.split()
        state = fields[0] if fields else "?"
        valid = len(state) >= 5 and state[4] not in ("I", "S")
        data = {"lvcreate_stdout": made.stdout, "lvcreate_stderr": made.stderr,
                "lvs_before": before, "lvs_after": after, "dd_rc": dd.returncode,
                "dd_stderr": dd.stderr[-400:], "snap_after": attr.stdout.strip(),
                "snap_after_stderr": attr.stderr.strip(), "valid": valid}
        self.sm.facts["lvm_100_origin"] = data
        return (f"whole 32 MiB origin rewritten under a 100%ORIGIN snapshot: snapshot "
                f"{'still valid' if valid else 'INVALID (COW overflowed)'} "
                f"({attr.stdout.strip()})", data)

    def domu_create(self) -> tuple[str, dict[str, Any]]:
        smoke.use_domain(NAME)
        IMAGES.mkdir(parents=True, exist_ok=True)
        kernel, ramdisk = IMAGES / "vmlinuz", IMAGES / "initramfs.cpio.gz"
        shutil.copyfile(self.sm.guest / "vmlinuz", kernel)
        shutil.copyfile(self.sm.guest / "initramfs.cpio.gz", ramdisk)
        qcow = IMAGES / f"{NAME}-xvdb.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "64M")
        cfg = IMAGES / f"{NAME}.cfg"
        cfg.write_text("\n".join([
            f'name = "{NAME}"', 'type = "pv"', "memory = 128", "vcpus = 1",
            f'kernel = "{kernel}"', f'ramdisk = "{ramdisk}"',
            'extra = "console=hvc0 quiet domsnap.tick=1"',
            f'disk = [ "format=raw, vdev=xvda, access=rw, backendtype=phy, target={LVDEV}", '
            f'"format=qcow2, vdev=xvdb, access=rw, backendtype=qdisk, target={qcow}" ]', ""]))
        t0 = time.monotonic()
        p = smoke.xl_create(NAME, cfg)
        if p.returncode != 0:
            raise StepFailed(f"xl create failed ({p.returncode}): {p.stderr.strip()}")
        seen = wait_ticks(3, 0, 600)
        deadline = time.monotonic() + 300
        while True:
            try:
                host, info = self.sm.client.resolve(NAME)
                if host == smoke.HOST:
                    break
            except Exception:  # noqa: BLE001 - the next heartbeat lists it
                pass
            if time.monotonic() > deadline:
                raise StepFailed(f"{NAME} never appeared in the inventory")
            time.sleep(1)
        disk_seen = [d for _, d in seen]
        if max(disk_seen) < 1:
            raise StepFailed(f"the guest reads nothing back from its LV xvda: {seen}")
        return (f"xl create + 3 ticks {time.monotonic() - t0:.1f}s, xvda on {LVDEV} "
                f"(ticks {seen[-3:]})", {"ticks": seen, "xl_list_l": smoke.xl(
                    "list", "-l", NAME).stdout, "info_disks": [d.model_dump() for d in
                                                                 info.disks]})

    def create(self, name: str, disk_only: bool,
               disks: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        from schemas.models import DiskChoice

        detail, data = self.sm.create(name, disk_only=disk_only,
                                      disks=[DiskChoice(**d) for d in disks])
        strategies = {d["vdev"]: d.get("strategy") for d in data["disks"]}
        data["lvs"] = lvs()
        if strategies.get("xvda") != "lvm":
            raise StepFailed(f"xvda was snapshotted with {strategies.get('xvda')}, not lvm",
                             data)
        return f"{detail}; strategies {strategies}", data

    def revert_disk_only(self) -> tuple[str, dict[str, Any]]:
        """Revert to the disk-only snapshot and start the domain: a fresh boot reads the
        snapshot-time counter back from the merged LV."""
        snap = self.sm.facts["snapshots"]["l-disk"]
        offset = smoke.console_size()
        job = self.sm._job(self.sm.client.revert(NAME, "l-disk", start="running"))
        data = self.sm._job_data(job)
        deadline = time.monotonic() + 600
        first: tuple[int, int] | None = None
        while first is None:
            got = smoke.ticks(offset)
            boot = [t for t in got if t[0] == 1]
            if boot:
                first = boot[0]
                break
            if time.monotonic() > deadline:
                raise StepFailed("no first tick of the rebooted guest in 600 s",
                                 {**data, "console_tail": tail(smoke.CONSOLE, 20)})
            time.sleep(0.5)
        lo = (snap["tick_before"] or 1) - 1
        hi = snap["tick_after"] or lo + 100
        data.update({"first_tick": first, "window": [lo, hi], "lvs": lvs(),
                     "state": smoke.domain_state()})
        if not lo <= first[1] <= hi:
            raise StepFailed(f"the rebooted guest read {first[1]} from its LV, not a value "
                             f"of the snapshot's window [{lo}, {hi}]", data)
        return (f"revert ok in {data.get('worker_s')}s; fresh boot reads {first[1]} from "
                f"the merged LV (window [{lo}, {hi}]); domain {data['state']}", data)
