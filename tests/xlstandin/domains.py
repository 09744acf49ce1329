"""The stand-in's domains: state on disk, domids, and their QEMU processes.

Layout (``XL_STANDIN_ROOT``)::

    lock                      flock'ed around domid allocation and state changes
    next-domid                the next domid to hand out (1, 2, 3, ...; never reused)
    domains/<uuid>/           one live domain: config.json (libxl-shaped: what libxl
                              stores as the "libxl-json" userdata and a reboot is
                              rebuilt from), userdata-xl (what `xl config-update`
                              stored: read once, at the next reboot), domid,
                              qemu.pid (written by QEMU), state (running | paused |
                              creating <pid>), no-suspend (optional test marker)
    console/<uuid>.log        the guest's serial console, appended across restores

``XL_STANDIN_RUN_DIR`` plays /var/run/xen: ``qmp-libxl-<domid>`` (the device model's
QMP socket, for the code under test; absent for a stub-domain device model) and
``standin-ctl-<domid>`` (the stand-in's own monitor) and ``standin-mon-<domid>`` (where
the stand-in's hypervisor hears QEMU's SHUTDOWN events: tests/xlstandin/hypervisor.py).
``domains/<uuid>/shutdown`` holds the reason of a domain shut down and not yet destroyed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.xlstandin.qmp import QMP, MonitorBusy, QMPFailure
from tests.xlstandin.xlcfg import summary


class Fail(Exception):
    """End the command: print ``lines`` on stderr and exit with ``rc``."""

    def __init__(self, rc: int, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.rc = rc
        self.lines = list(lines)


def libxl_error(where: str, domid: int | None, message: str) -> str:
    """A libxl log line as xl prints it (``where`` = ``file.c:line:function``).

    Line numbers follow upstream sources and may differ by a few from a given build.
    """
    dom = f"Domain {domid}:" if domid is not None else ""
    return f"libxl: error: {where}: {dom}{message}"


_held: list[int] = []  # the lock fd while this process holds the lock


@dataclass(frozen=True)
class Env:
    root: Path
    run_dir: Path
    accel: list[str]
    qemu: str
    suspend_timeout: float
    pv_shadow: bool = True  # False: XL_STANDIN_NO_PV_SHADOW=1 (no log-dirty for PV)

    @classmethod
    def from_environ(cls) -> Env:
        missing = [k for k in ("XL_STANDIN_ROOT", "XL_STANDIN_RUN_DIR") if not os.environ.get(k)]
        if missing:
            raise Fail(1, f"xl (test stand-in): {' and '.join(missing)} must be set")
        accel = [a.strip() for a in os.environ.get("XL_STANDIN_ACCEL", "tcg").split(",")
                 if a.strip()]
        try:
            timeout = float(os.environ.get("XL_STANDIN_SUSPEND_TIMEOUT", "60"))
        except ValueError:
            raise Fail(1, "xl (test stand-in): XL_STANDIN_SUSPEND_TIMEOUT must be a number") \
                from None
        env = cls(root=Path(os.path.abspath(os.environ["XL_STANDIN_ROOT"])),
                  run_dir=Path(os.path.abspath(os.environ["XL_STANDIN_RUN_DIR"])),
                  accel=accel or ["tcg"],
                  qemu=os.environ.get("XL_STANDIN_QEMU", "qemu-system-x86_64"),
                  suspend_timeout=timeout,
                  pv_shadow=os.environ.get("XL_STANDIN_NO_PV_SHADOW", "") in ("", "0"))
        for d in (env.root / "domains", env.root / "console", env.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        return env

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The stand-in's global lock (re-entrant within one xl process)."""
        if _held:
            yield
            return
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _held.append(fd)
            yield
        finally:
            _held.clear()
            os.close(fd)  # releases the lock

    def alloc_domid(self) -> int:
        """Next domid (call with the lock held)."""
        path = self.root / "next-domid"
        try:
            domid = int(path.read_text().strip() or "1")
        except FileNotFoundError:
            domid = 1
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{domid + 1}\n")
        os.replace(tmp, path)
        return domid

    def qmp_libxl(self, domid: int) -> Path:
        return self.run_dir / f"qmp-libxl-{domid}"

    def ctl(self, domid: int) -> Path:
        return self.run_dir / f"standin-ctl-{domid}"

    def mon(self, domid: int) -> Path:
        """The QMP socket the stand-in's hypervisor listens on for the domain's shutdowns."""
        return self.run_dir / f"standin-mon-{domid}"

    def console(self, uuid: str) -> Path:
        return self.root / "console" / f"{uuid}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Dom:
    env: Env
    uuid: str
    domid: int
    config: dict[str, Any]

    @property
    def dir(self) -> Path:
        return self.env.root / "domains" / self.uuid

    @property
    def name(self) -> str:
        return str(self.config["c_info"]["name"])

    @property
    def type(self) -> str:
        return str(self.config["c_info"].get("type", "pv"))

    @property
    def stubdom(self) -> bool:
        return bool(summary(self.config)["stubdom"])

    def pid(self) -> int | None:
        """The QEMU pid if that process is alive and is this domain's."""
        try:
            pid = int((self.dir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            if self.uuid.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            return None
        return pid

    def creating(self) -> bool:
        """Reserved by an xl create/restore that is still starting it."""
        state = self.saved_state()
        if not state.startswith("creating"):
            return False
        try:
            return _alive(int(state.split()[1]))
        except (IndexError, ValueError):
            return False

    def saved_state(self) -> str:
        try:
            return (self.dir / "state").read_text().strip()
        except OSError:
            return ""

    def set_state(self, state: str) -> None:
        tmp = self.dir / "state.tmp"
        tmp.write_text(state + "\n")
        os.replace(tmp, self.dir / "state")

    def control(self, timeout: float = 60.0, greeting_timeout: float = 30.0) -> QMP:
        return QMP(str(self.env.ctl(self.domid)), timeout=timeout,
                   greeting_timeout=greeting_timeout)

    def run_state(self) -> str:
        """QEMU's run state from the control monitor; the recorded state if the
        monitor is busy (another xl command holds it, e.g. during a save)."""
        if self.creating():
            return "paused"
        try:
            with self.control(timeout=5, greeting_timeout=1.5) as q:
                return str(q.execute("query-status")["status"])
        except (MonitorBusy, QMPFailure, OSError):
            return self.saved_state() or "paused"

    def cpu_seconds(self) -> float:
        pid = self.pid()
        if pid is None:
            return 0.0
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0


def _load(env: Env, d: Path) -> Dom | None:
    try:
        domid = int((d / "domid").read_text().strip())
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return Dom(env=env, uuid=d.name, domid=domid, config=config)


def domains(env: Env) -> list[Dom]:
    """Live domains by domid; domains whose QEMU died are reaped."""
    found, dead = [], []
    for d in sorted((env.root / "domains").iterdir()):
        dom = _load(env, d)
        if dom is None:
            continue
        if dom.pid() is not None or dom.creating():
            found.append(dom)
        else:
            dead.append(dom)
    if dead:
        with env.lock():
            for dom in dead:
                if dom.pid() is None and not dom.creating():
                    remove(dom)
    return sorted(found, key=lambda x: x.domid)


def remove(dom: Dom) -> None:
    """Forget a domain whose QEMU is gone (its console log stays)."""
    for p in (dom.env.qmp_libxl(dom.domid), dom.env.ctl(dom.domid), dom.env.mon(dom.domid)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    if dom.dir.is_dir():
        for f in dom.dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(OSError):
            dom.dir.rmdir()


def kill(dom: Dom) -> None:
    """Stop the domain's QEMU (SIGTERM: QEMU closes its images cleanly; SIGKILL after
    10 s) and forget the domain."""
    pid = dom.pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.01)
    with dom.env.lock():
        remove(dom)


# --------------------------------------------------------------------------- QEMU


def _opt(value: str) -> str:
    """Escape a value for QEMU's key=value option syntax."""
    return value.replace(",", ",,")


def qemu_argv(dom: Dom, *, paused: bool, incoming: bool) -> list[str]:
    s = summary(dom.config)
    env = dom.env
    argv = [env.qemu, "-name", _opt(s["name"]), "-uuid", dom.uuid, "-machine", "q35"]
    for accel in env.accel:
        argv += ["-accel", accel]
    argv += ["-m", str(s["memory_mib"]), "-smp", str(s["vcpus"]),
             "-nodefaults", "-no-user-config", "-display", "none",
             "-chardev", f"file,id=con0,path={_opt(str(env.console(dom.uuid)))},append=on",
             "-serial", "chardev:con0"]
    if not s["stubdom"]:
        argv += ["-qmp", f"unix:{_opt(str(env.qmp_libxl(dom.domid)))},server=on,wait=off"]
    argv += ["-qmp", f"unix:{_opt(str(env.ctl(dom.domid)))},server=on,wait=off",
             "-qmp", f"unix:{_opt(str(env.mon(dom.domid)))},server=on,wait=off",
             # a reset is a shutdown, and a shutdown stops the vCPUs but keeps QEMU (the
             # domain) until it is destroyed, as Xen keeps a shut-down domain: the stand-in's
             # hypervisor records the reason, the monitor acts on it
             # (tests/xlstandin/hypervisor.py, monitor.py)
             "-no-reboot", "-no-shutdown",
             "-pidfile", str(dom.dir / "qemu.pid"), "-daemonize"]
    if s["kernel"]:
        argv += ["-kernel", s["kernel"]]
    if s["ramdisk"]:
        argv += ["-initrd", s["ramdisk"]]
    if s["cmdline"]:
        argv += ["-append", s["cmdline"]]
    for disk in s["disks"]:
        # cdroms are not attached: the guest's /dev/vdX are its disks, in order
        if disk.get("is_cdrom") or not disk.get("pdev_path"):
            continue
        fmt = str(disk.get("format", "raw"))
        driver = {"vhd": "vpc"}.get(fmt, fmt)
        ro = not disk.get("readwrite")
        node = f"{disk['vdev']}-{fmt}"
        # The protocol node is left unnamed: QEMU calls it "#blockNNN", as in Xen's
        # device model. phy disks are attached the same way (see the module docstring).
        argv += ["-blockdev", json.dumps({
                     "driver": driver, "node-name": node, "read-only": ro,
                     "file": {"driver": "file", "filename": disk["pdev_path"], "read-only": ro}}),
                 # qdev id = vdev: tests write into a disk with HMP `qemu-io -d <vdev>/...`
                 "-device", f"virtio-blk-pci,drive={node},id={disk['vdev']}"]
    argv.append("-S")  # the vCPUs start once the hypervisor listens (cli.make_domain)
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def start_qemu(dom: Dom, *, paused: bool, incoming: bool) -> None:
    """Start the domain's QEMU (daemonized: its sockets exist when this returns)."""
    env = dom.env
    for sock in (env.qmp_libxl(dom.domid), env.ctl(dom.domid), env.mon(dom.domid)):
        if len(str(sock).encode()) > 107:
            raise Fail(1, f"xl (test stand-in): socket path {sock} is longer than a unix "
                          "socket allows (107 bytes): use a shorter XL_STANDIN_RUN_DIR")
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
    try:
        proc = subprocess.run(qemu_argv(dom, paused=paused, incoming=incoming),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Fail(3, libxl_error("libxl_dm.c:3102:device_model_spawn_outcome", dom.domid,
                                  f"domain {dom.domid} device model: spawn failed (rc=-3)"),
                   f"xl (test stand-in): {exc}") from None
    if proc.returncode != 0 or dom.pid() is None:
        raise Fail(3, *[line for line in proc.stderr.splitlines() if line.strip()],
                   libxl_error("libxl_dm.c:3102:device_model_spawn_outcome", dom.domid,
                               f"domain {dom.domid} device model: spawn failed (rc=-3)"))


def wait_finalized(q: QMP) -> str:
    """A completed migration may still show the run state finish-migrate, when `cont`
    fails ("Migration is not finalized yet"): wait it out."""
    st = q.poll("query-status", lambda r: r.get("status") != "finish-migrate",
                timeout=30, interval=0.002)
    return str(st["status"])


def daemonize(log: Path, body: Callable[[], int]) -> None:
    """Run ``body`` as a daemon: double fork, its own session, stdin on /dev/null,
    stdout/stderr appended to ``log``, no other fd of the caller (whoever ran ``xl``
    sees xl end). Returns in the caller once the daemon is detached."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    code = 1
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        log.parent.mkdir(exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.closerange(3, 65536)
        code = body()
    except BaseException:  # noqa: BLE001 - a daemon reports and ends
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)
