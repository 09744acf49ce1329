"""The libvirt side of bench/libvirt.py: a domain the same as the one domsnap runs
(same kernel, initramfs, command line, memory, one vCPU, q35, two virtio-blk qcow2
disks, serial console to a file, no graphics), driven with ``virsh -c qemu:///system``.

Also follows libvirt's QMP events (``virsh qemu-monitor-event --loop --timestamp``) so
that the host-side STOP -> RESUME of each snapshot is read the same way as domsnap
reads it: from the timestamps QEMU puts on its events.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

URI = "qemu:///system"
VIRSH = ["virsh", "-q", "-c", URI]
# "2026-12-01 16:20:01.123+0000: event STOP for domain 'x': <null>"
EVENT_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)([+-]\d{4}): event (\w+) ")


def virsh(*args: str, timeout: float = 600) -> str:
    """Run one virsh command; raise with what was sent and received when it fails."""
    argv = [*VIRSH, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()} {proc.stdout.strip()}")
    return proc.stdout


def available() -> bool:
    """Whether libvirtd answers on qemu:///system (scripts/setup-libvirt.sh)."""
    try:
        virsh("version", timeout=20)
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return True


def domain_xml(name: str, *, memory_mib: int, kernel: Path, initrd: Path, cmdline: str,
               disks: list[Path], console: Path) -> str:
    """The libvirt definition matching what the qemu driver starts for domsnap."""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file={quoteattr(str(p))}/><target dev='vd{chr(ord('a') + i)}' bus='virtio'/>"
        f"</disk>" for i, p in enumerate(disks))
    return (
        f"<domain type='qemu'><name>{escape(name)}</name>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64' machine='q35'>hvm</type>"
        f"<kernel>{escape(str(kernel))}</kernel><initrd>{escape(str(initrd))}</initrd>"
        f"<cmdline>{escape(cmdline)}</cmdline></os>"
        f"<features><acpi/><apic/></features><clock offset='utc'/>"
        f"<on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>"
        f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_xml}"
        f"<serial type='file'><source path={quoteattr(str(console))}/>"
        f"<target port='0'/></serial>"
        f"<controller type='usb' model='none'/><memballoon model='none'/>"
        f"</devices></domain>")


@dataclass
class LibvirtDomain:
    name: str
    console: Path
    disks: list[Path]
    events_log: Path
    events_proc: subprocess.Popen[bytes] | None = None

    def create(self, xml: str, xml_path: Path) -> None:
        """Define and start the domain, and start following its QMP events."""
        self.destroy()
        xml_path.write_text(xml)
        virsh("define", str(xml_path))
        fh = self.events_log.open("ab")
        self.events_proc = subprocess.Popen(
            [*VIRSH, "qemu-monitor-event", "--domain", self.name, "--loop", "--timestamp"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        fh.close()
        virsh("start", self.name)

    def snapshot_internal(self, snap: str) -> None:
        virsh("snapshot-create-as", self.name, snap)

    def snapshot_external(self, snap: str, into: Path) -> None:
        args = ["snapshot-create-as", self.name, snap, "--live",
                "--memspec", f"file={into / f'{snap}.mem'},snapshot=external"]
        for i, _ in enumerate(self.disks):
            vdev = f"vd{chr(ord('a') + i)}"
            args += ["--diskspec", f"{vdev},snapshot=external,file={into / f'{snap}.{vdev}.qcow2'}"]
        virsh(*args)

    def suspend(self) -> None:
        virsh("suspend", self.name)

    def resume(self) -> None:
        virsh("resume", self.name)

    def events(self) -> list[tuple[float, str]]:
        """(epoch seconds, event name) of every QMP event seen so far."""
        out = []
        for line in self.events_log.read_text(errors="replace").splitlines():
            m = EVENT_RE.match(line)
            if m:
                when = dt.datetime.strptime(m.group(1) + m.group(2), "%Y-%m-%d %H:%M:%S.%f%z")
                out.append((when.timestamp(), m.group(3)))
        return out

    def pause_window(self, start: float, end: float) -> tuple[float, float]:
        """(STOP, RESUME) epoch seconds (QEMU's timestamps) of the snapshot run in
        [start, end] (epoch seconds). Waits a little for virsh to print the events."""
        for _ in range(50):
            evs = [(t, e) for t, e in self.events() if start - 0.5 <= t <= end + 0.5]
            stops = [t for t, e in evs if e == "STOP"]
            resumes = [t for t, e in evs if e == "RESUME"]
            if stops and resumes and resumes[-1] > stops[0]:
                return stops[0], resumes[-1]
            time.sleep(0.1)
        raise RuntimeError(f"no STOP/RESUME for {self.name} in [{start}, {end}]: "
                           f"{self.events()[-6:]}")

    def destroy(self) -> None:
        """Stop the domain and forget it (and its snapshots' metadata)."""
        if self.events_proc is not None:
            self.events_proc.terminate()
            try:
                self.events_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.events_proc.kill()
            self.events_proc = None
        subprocess.run([*VIRSH, "destroy", self.name], capture_output=True, timeout=120,
                       check=False)
        subprocess.run([*VIRSH, "undefine", self.name, "--snapshots-metadata"],
                       capture_output=True, timeout=120, check=False)
