"""The model behind tests/integration/test_model.py, and how the real system is
read to compare with it.

The model knows, per domain: its run state, what every disk holds now (one
marker byte filling slot 1, and the disk's constant base pattern in slot 2, which
nothing ever overwrites), and per snapshot what each covered disk held when it was
taken, whether it has memory, the run state it recorded and its parent. The test
writes a new marker to every disk before each create, so every snapshot of a disk
is told apart by its content.

Reading the real system: the domain config domsnap keeps, QEMU's own view
(``query-block`` on the domain's QMP socket), ``qemu-img info``/``check`` and
``qemu-io -r -U`` (read-only, shared: fine while QEMU has the image open), the
records in Redis and the sidecars on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.models import SnapshotRecord
from tests.integration.cluster import Cluster, Domain
from tests.integration.diskdata import CHUNK, qmp, write_pattern

MARK = CHUNK  # slot 1: the marker the test writes before each create
BASE = 2 * CHUNK  # slot 2: the disk's base pattern, written once when the disk is made
BACKED_MARK = 0xA0  # slot 1 of a backed disk's base image shows through its overlay
KINDS = ("qcow2", "raw", "backed")  # LVM: not here (no device-mapper in this kernel)


@dataclass
class SnapModel:
    name: str
    memory: bool
    state: str  # the run state it recorded
    disks: dict[str, int]  # vdev -> the marker it holds
    parent: str | None


@dataclass
class DomModel:
    state: str
    base: dict[str, int]  # vdev -> base pattern (slot 2)
    content: dict[str, int]  # vdev -> marker now (slot 1; 0 = never written)
    kinds: dict[str, str]
    snaps: dict[str, SnapModel] = field(default_factory=dict)
    current: str | None = None
    next_marker: int = 1

    def new_marker(self) -> int:
        m = self.next_marker
        self.next_marker += 1
        assert m < BACKED_MARK, "more markers than this model can tell apart"
        return m


# ---------------------------------------------------------------- making disks


def _qemu_io(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["qemu-io", *args], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    if check and (res.returncode != 0 or "fail" in res.stdout.lower()):
        raise AssertionError(f"qemu-io {' '.join(args)}: {res.stdout} {res.stderr}")
    return res


def make_disks(cluster: Cluster, host: str, name: str, kinds: list[str]
               ) -> tuple[list[tuple[Path, str]], dict[str, int], dict[str, int]]:
    """Images for a domain: qcow2, raw, or a qcow2 overlay on a qcow2 base. Returns
    (path, format) per disk, the base pattern per vdev and the initial marker."""
    h = cluster.host(host)
    files: list[tuple[Path, str]] = []
    base: dict[str, int] = {}
    content: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        vdev = h.vdevs[i]
        pattern = 0xB0 + i
        if kind == "backed":
            under = cluster.make_disk(h, f"{name}-{vdev}-base", fmt="qcow2")
            _qemu_io("-f", "qcow2", "-c", f"write -P 0x{pattern:02x} {BASE} {CHUNK}",
                     "-c", f"write -P 0x{BACKED_MARK:02x} {MARK} {CHUNK}", str(under))
            top = h.images / f"{name}-{vdev}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(under),
                            "-F", "qcow2", str(top)], check=True)
            files.append((top, "qcow2"))
            content[vdev] = BACKED_MARK
        else:
            p = cluster.make_disk(h, f"{name}-{vdev}", fmt=kind)
            _qemu_io("-f", kind, "-c", f"write -P 0x{pattern:02x} {BASE} {CHUNK}", str(p))
            files.append((p, kind))
            content[vdev] = 0
        base[vdev] = pattern
    return files, base, content


# ---------------------------------------------------------------- writing markers


def write_marker(dom: Domain, vdev: str, marker: int, *, active: bool,
                 path: str, fmt: str) -> None:
    """Through the domain's QEMU while it runs (or is paused), with qemu-io on the
    image the domain would open when it is shut off."""
    if active:
        write_pattern(dom, vdev, MARK, marker)
    else:
        _qemu_io("-f", fmt, "-c", f"write -P 0x{marker:02x} {MARK} {CHUNK}", path)


# ---------------------------------------------------------------- reading images

# Results of qemu-img/qemu-io looks, each kept with the stat of every file it read
# (inode, size, mtime_ns) and reused only while all of them are unchanged: frozen
# images are read after every step, and mostly they have not changed.
_Stamp = tuple[tuple[str, int, int, int], ...]
_cache: dict[tuple[Any, ...], tuple[_Stamp, Any]] = {}


def _stamp(paths: Iterable[str]) -> _Stamp | None:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        out.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _cached(key: tuple[Any, ...]) -> Any:
    hit = _cache.get(key)
    if hit is not None and _stamp(p for p, *_ in hit[0]) == hit[0]:
        return hit[1]
    return None


def _keep(key: tuple[Any, ...], paths: Iterable[str], value: Any) -> None:
    """Cache ``value`` unless a file changed in the last 2 s (mtime is only as fine as
    the kernel's clock tick: a write in the same tick as the look could go unseen)."""
    stamp = _stamp(paths)
    if stamp is not None and all(time.time_ns() - m > 2_000_000_000 for *_, m in stamp):
        _cache[key] = (stamp, value)



def read_slots(path: str, fmt: str, want: dict[int, int]) -> dict[int, bool]:
    """{offset: pattern} -> {offset: holds it?}, one qemu-io for all of them."""
    key = ("read", path, fmt, tuple(sorted(want.items())))
    hit = _cached(key)
    if hit is not None:
        return dict(hit)
    files = [str(i["filename"]) for i in chain_info(path)]
    result = _read_slots(path, fmt, want)
    _keep(key, files, result)
    return result


def _read_slots(path: str, fmt: str, want: dict[int, int]) -> dict[int, bool]:
    args = ["-r", "-U", "-f", fmt]
    offsets = sorted(want)
    for off in offsets:
        args += ["-c", f"read -P 0x{want[off]:02x} {off} {CHUNK}"]
    res = _qemu_io(*args, str(path), check=False)
    bad = {int(line.split("offset ")[1].split(",")[0])
           for line in res.stdout.splitlines() if "verification failed" in line}
    ok_reads = res.stdout.count(f"read {CHUNK}/{CHUNK} bytes")
    if ok_reads != len(offsets):
        raise AssertionError(f"qemu-io could not read {path} ({fmt}): {res.stdout} {res.stderr}")
    return {off: off not in bad for off in offsets}


def first_byte(path: str, fmt: str, offset: int) -> str:
    """What is there instead (for failure messages)."""
    res = _qemu_io("-r", "-U", "-f", fmt, "-c", f"read -v {offset} 4", str(path), check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("0")]
    return lines[0] if lines else (res.stdout + res.stderr).strip()


def chain_info(path: str) -> list[dict[str, Any]]:
    """``qemu-img info --backing-chain`` with the format probed, as QEMU would see it."""
    hit = _cached(("info", path))
    if hit is not None:
        return list(hit)
    res = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"qemu-img info {path}: {res.stderr}"
    data: list[dict[str, Any]] = json.loads(res.stdout)
    _keep(("info", path), [str(i["filename"]) for i in data], data)
    return data


def check_images(paths: Iterable[str], *, leaks_ok: set[str]) -> list[str]:
    """``qemu-img check`` on each qcow2 image, in parallel; the failures. Leaked
    clusters (exit 3: "not harmful", says qemu-img) are allowed only on ``leaks_ok``:
    images a QEMU writes to (a domain's active images), where a live internal snapshot
    or a destroy (QEMU killed) leaves them. Corruption (exit 2) fails everywhere."""
    procs = []
    done: list[tuple[str, int, str]] = []
    for p in paths:
        hit = _cached(("check", p))
        if hit is not None:
            done.append((p, *hit))
            continue
        procs.append((p, subprocess.Popen(["qemu-img", "check", "-U", "-q", p],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, stdin=subprocess.DEVNULL)))
    for p, proc in procs:
        out, _ = proc.communicate(timeout=120)
        done.append((p, proc.returncode, out))
        _keep(("check", p), [p], (proc.returncode, out))
    bad = []
    for p, rc, out in done:
        if rc != 0 and not (rc == 3 and p in leaks_ok):
            bad.append(f"{p}: exit {rc}: {out.strip()}")
    return bad


def qemu_view(dom: Domain) -> dict[str, tuple[str, str]]:
    """vdev -> (file, format) of the top node QEMU has open for it (``query-block``)."""
    out: dict[str, tuple[str, str]] = {}
    for dev in qmp(dom, "query-block"):
        qdev = str(dev.get("qdev") or "")
        parts = qdev.split("/")
        vdev = parts[3] if qdev.startswith("/machine/peripheral/") and len(parts) > 3 \
            else str(dev.get("device") or qdev)
        ins = dev.get("inserted")
        if ins:
            out[vdev] = (str(ins["file"]), str(ins["drv"]))
    return out


# ---------------------------------------------------------------- records and files


def sidecars(dom: Domain) -> dict[str, SnapshotRecord]:
    d = dom.host.snapshots / dom.uuid
    return {p.stem: SnapshotRecord.model_validate_json(p.read_text())
            for p in sorted(d.glob("*.json"))}


def domain_files(dom: Domain, prefix: str) -> set[str]:
    """Every file that belongs to the domain: its snapshot dir and its images (named
    ``PREFIX-*`` under the host's images dir)."""
    out: set[str] = set()
    snapdir = dom.host.snapshots / dom.uuid
    if snapdir.is_dir():
        out |= {str(p) for p in snapdir.rglob("*") if p.is_file()}
    out |= {str(p) for p in dom.host.images.glob(f"{prefix}-*") if p.is_file()}
    return out


def fingerprint(dom: Domain, prefix: str, records: list[SnapshotRecord],
                current: str | None, state: str) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    files = {}
    for p in sorted(domain_files(dom, prefix)):
        st = os.stat(p)
        files[p] = (st.st_size, st.st_mtime_ns)
    snaps = {}
    for p in files:
        if p.endswith(".qcow2"):
            snaps[p] = [s.get("name") for s in chain_info(p)[0].get("snapshots", [])]
    return {"records": [r.model_dump(mode="json") for r in records], "current": current,
            "sidecars": {n: r.model_dump(mode="json") for n, r in sidecars(dom).items()},
            "files": files, "internal": snaps, "state": state, "config": dom.config()}
