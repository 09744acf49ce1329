"""A real little fleet for integration tests: real Redis, real ``domsnap worker``
processes (one per host name, each with its own state dir), real QEMU domains.

Nothing here fakes hypervisor work: domains are QEMU processes started by the
qemu driver, disks are qcow2 files made by qemu-img.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from domsnap.client import Client
from domsnap.settings import Settings
from schemas.models import JobRecord
from tests.vm.guest import ensure_guest, wait_for_tick

REPO = Path(__file__).resolve().parents[2]
# A worker is alive once its start-up repair is done: that can be a whole recovery (a
# domain stopped and restored under TCG), on a host where the other lane runs guests too
START_S = 180
REDIS_URL = os.environ.get("DOMSNAP_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
DOMSNAP = [sys.executable, "-c", "from domsnap.cli import main; main()"]


def run_cli(env: dict[str, str], *args: str, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*DOMSNAP, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"domsnap {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


STANDIN_DIR = REPO / "tests" / "xlstandin"


def standin_env(xen: Path, run: Path, *, suspend_timeout: float = 2) -> dict[str, str]:
    """What the stand-in xl reads: its state dir, the dir playing /var/run/xen, QEMU's
    accelerators, and how long a guest that does not suspend is waited for."""
    from workers.drivers.accel import accelerators

    return {"XL_STANDIN_ROOT": str(xen), "XL_STANDIN_RUN_DIR": str(run),
            "XL_STANDIN_ACCEL": ",".join(accelerators(None)),
            "XL_STANDIN_SUSPEND_TIMEOUT": f"{suspend_timeout:g}"}


@dataclass
class HostHandle:
    """One host of the fleet. ``driver`` is its hypervisor: ``qemu`` (domsnap is the
    toolstack) or ``xl`` (a dom0, here the stand-in ``xl`` over real QEMU)."""

    name: str
    root: Path
    env: dict[str, str]
    driver: str = "qemu"
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def vdevs(self) -> list[str]:
        """Disk names the toolstack uses: virtio for qemu, Xen's xvd* for xl."""
        letters = "abcdefgh"
        return [f"xvd{c}" if self.driver == "xl" else f"vd{c}" for c in letters]

    @property
    def xen(self) -> Path:
        """The stand-in's state (XL_STANDIN_ROOT)."""
        return self.root / "xen"

    @property
    def xen_run(self) -> Path:
        """Plays /var/run/xen (DOMSNAP_XEN_RUN_DIR = XL_STANDIN_RUN_DIR)."""
        return self.root / "run"

    def xl(self, *args: str, check: bool = True, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(STANDIN_DIR / "xl"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"xl {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def snapshots(self) -> Path:
        return self.state_dir / "snapshots"

    def cli(self, *args: str, timeout: float = 300, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, timeout=timeout, check=check)

    def domain_dir(self, uuid: str) -> Path:
        return self.state_dir / "domains" / uuid

    def console(self, uuid: str) -> Path:
        if self.driver == "xl":
            return self.xen / "console" / f"{uuid}.log"
        return self.domain_dir(uuid) / "console.log"


@dataclass
class Domain:
    host: HostHandle
    name: str
    uuid: str
    disks: dict[str, Path] = field(default_factory=dict)

    @property
    def console(self) -> Path:
        return self.host.console(self.uuid)

    @property
    def vdevs(self) -> list[str]:
        return list(self.disks)

    def _xen_file(self, name: str) -> str | None:
        try:
            return (self.host.xen / "domains" / self.uuid / name).read_text().strip()
        except FileNotFoundError:
            return None

    @property
    def qmp(self) -> Path:
        """The domain's QMP socket: where the qemu driver puts it, or the device model's
        (``qmp-libxl-<domid>``) on a dom0."""
        if self.host.driver == "xl":
            return self.host.xen_run / f"qmp-libxl-{self._xen_file('domid')}"
        from workers.drivers.qemu import QemuDriver
        from workers.hostio.runner import SubprocessRunner

        return QemuDriver(self.host.state_dir, SubprocessRunner()).qmp_path(self.uuid)

    def pid(self) -> int | None:
        """The pid of the domain's QEMU if that process is alive."""
        if self.host.driver == "xl":
            text = self._xen_file("qemu.pid")
            if not text:
                return None
            try:
                os.kill(int(text), 0)
            except ProcessLookupError:
                return None
            return int(text)
        from workers.drivers.qemu import QemuDriver
        from workers.hostio.runner import SubprocessRunner

        return QemuDriver(self.host.state_dir, SubprocessRunner()).pid(self.uuid)

    def state(self) -> str:
        """running / paused / shutoff, as the host's toolstack says."""
        import json

        if self.host.driver == "xl":
            proc = self.host.xl("list", self.name, check=False)
            if proc.returncode != 0:
                return "shutoff"
            row = proc.stdout.splitlines()[-1].split()
            return "paused" if "p" in row[4] else "running"
        out = self.host.cli("domain-list", "--json", check=True).stdout
        for d in json.loads(out):
            if d["uuid"] == self.uuid:
                return str(d["state"])
        raise AssertionError(f"{self.name} not in domain-list: {out}")

    def pause(self) -> None:
        if self.host.driver == "xl":
            self.host.xl("pause", self.name)
        else:
            self.host.cli("domain-pause", self.name, check=True)

    def unpause(self) -> None:
        if self.host.driver == "xl":
            self.host.xl("unpause", self.name)
        else:
            self.host.cli("domain-unpause", self.name, check=True)

    def destroy(self) -> None:
        """Shut the domain off at once; domsnap still knows it."""
        if self.host.driver == "xl":
            self.host.xl("destroy", self.name)
        else:
            self.host.cli("domain-destroy", self.name, check=True)

    def start(self) -> None:
        """Start the shut-off domain again from the config domsnap keeps."""
        if self.host.driver == "xl":  # as an operator would: xl, with domsnap's config
            cfg = self.host.root / f"{self.name}.current.cfg"
            cfg.write_text(self.host.cli("domain-config", self.name, check=True).stdout)
            self.host.xl("create", str(cfg))
        else:
            self.host.cli("domain-start", self.name, check=True)

    def config(self) -> dict[str, Any]:
        """The domain's config as domsnap keeps it (the driver's registry)."""
        import json

        if self.host.driver == "xl":
            entry = json.loads((self.host.state_dir / "xl" / f"{self.uuid}.json").read_text())
            return dict(entry["config"])
        data: dict[str, Any] = json.loads((self.host.domain_dir(self.uuid)
                                            / "domain.json").read_text())
        return data

    def active(self, vdev: str) -> str:
        return str(next(d["target"] for d in self.config()["disks"] if d["vdev"] == vdev))


class Cluster:
    def __init__(self, base: Path, suffix: str) -> None:
        self.base = base
        self.suffix = suffix  # host names and the key prefix are unique per session
        self.prefix = f"dstest-{suffix}"
        self.hosts: dict[str, HostHandle] = {}
        self.domains: list[Domain] = []  # every domain created, in order (see retire)
        self.first_started: list[str] = []  # hosts, in the order of their first start
        self.keep: set[str] = set()  # the session's hosts: never stopped before its end
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)

    def env_for(self, host: str, **extra: str) -> dict[str, str]:
        root = self.base / host
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOMSNAP_")}
        env.update({
            "DOMSNAP_REDIS_URL": REDIS_URL,
            "DOMSNAP_KEY_PREFIX": self.prefix,
            "DOMSNAP_HOST": host,
            "DOMSNAP_STATE_DIR": str(root / "state"),
            "DOMSNAP_SNAPSHOT_ROOTS": str(root / "images"),
            "DOMSNAP_HEARTBEAT_S": "1",
            # listing (two `xl` stand-in runs on an xl host) every 2 s, liveness every 1 s:
            # a dozen idle test hosts otherwise spend a core listing
            "DOMSNAP_INVENTORY_S": "2",
            "DOMSNAP_HOST_TTL_S": "4",
            "PYTHONPATH": str(REPO),
        })
        if os.environ.get("DOMSNAP_QEMU_ACCEL"):
            env["DOMSNAP_QEMU_ACCEL"] = os.environ["DOMSNAP_QEMU_ACCEL"]
        env.update(extra)
        return env

    def host(self, name: str, *, driver: str = "qemu", **extra: str) -> HostHandle:
        if name not in self.hosts:
            root = self.base / name
            if driver == "xl":
                extra = {"DOMSNAP_DRIVER": "xl",
                         "PATH": f"{STANDIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                         "DOMSNAP_XEN_RUN_DIR": str(root / "run"),
                         "DOMSNAP_SNAPSHOT_DIR": str(root / "state" / "snapshots"),
                         # Xen's Python bindings, played over the stand-in's domains
                         "DOMSNAP_XEN_PYTHON_DIR": str(STANDIN_DIR / "pylib"),
                         **standin_env(root / "xen", root / "run"), **extra}
            h = HostHandle(name=name, root=root, env=self.env_for(name, **extra), driver=driver)
            h.images.mkdir(parents=True, exist_ok=True)
            h.xen_run.mkdir(parents=True, exist_ok=True)
            if len(str(h.xen_run / "standin-ctl-9999")) > 107:
                raise AssertionError(f"{h.xen_run} is too deep for unix sockets")
            self.hosts[name] = h
        return self.hosts[name]

    def settings(self, **extra: Any) -> Settings:
        return Settings(redis_url=REDIS_URL, key_prefix=self.prefix, **extra)

    def client(self, **extra: Any) -> Client:
        return Client(self.settings(**extra))

    def start_worker(self, name: str, *, concurrency: int = 2, inflight: int = 2,
                     driver: str = "qemu", **extra: str) -> HostHandle:
        h = self.host(name, driver=driver, **extra)
        if name not in self.first_started:
            self.first_started.append(name)
        h.log = self.base / f"worker-{name}.log"
        fh = open(h.log, "ab")  # noqa: SIM115 - lives as long as the worker
        h.proc = subprocess.Popen(
            [*DOMSNAP, "worker", "--loglevel", "INFO", "-c", str(concurrency),
             "--inflight-concurrency", str(inflight)],
            env=h.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        client = self.client()
        started = time.monotonic()
        while not client.store.host_alive(name):
            rc = h.proc.poll()
            if rc is not None or time.monotonic() > started + START_S:
                why = (f"it exited with {rc}" if rc is not None else
                       f"not alive after {START_S} s")
                tail = "\n".join(h.log.read_text(errors="replace").splitlines()[-80:])
                raise AssertionError(f"worker {name} did not come up ({why}); the end of "
                                     f"its log:\n{tail}")
            time.sleep(0.2)
        self._wait_consuming(h)
        return h

    def _wait_consuming(self, h: HostHandle) -> None:
        """Both pools are up once their Celery nodes log 'ready'."""
        assert h.log is not None
        deadline = time.monotonic() + 60
        while h.log.read_text(errors="replace").count("ready.") < 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {h.name} pools not ready:\n{h.log.read_text()}")
            time.sleep(0.2)

    def stop_worker(self, name: str) -> None:
        self.stop_workers([name])

    def stop_workers(self, names: list[str]) -> None:
        """SIGTERM every named worker at once, then wait for each (a warm shutdown takes
        seconds: one after another, a session's teardown took minutes)."""
        running = [(h, h.proc) for h in (self.hosts[n] for n in names) if h.proc is not None]
        for _, proc in running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for h, proc in running:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            h.proc = None

    # ------------------------------------------------------------ domains

    def make_disk(self, h: HostHandle, name: str, *, fmt: str = "qcow2",
                  size: str = "64M") -> Path:
        path = h.images / f"{name}.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
        return path

    def create_domain(self, host: str, name: str, *, disks: int = 2, guest: bool = True,
                      raw_disk: bool = False, memory: int = 128, start: bool = True,
                      tick: float = 1.0, append: str = "", extra_cfg: list[str] | None = None,
                      disk_files: list[tuple[Path, str]] | None = None) -> Domain:
        h = self.host(host)
        if h.driver != "qemu":  # names are fleet-wide: the same test runs once per driver
            name = f"{name}-{h.driver}"
        extra_cfg = extra_cfg or []
        paths: dict[str, Path] = {}
        specs = []
        if disk_files is None:  # else: the caller made the images, (path, format) each
            disk_files = [(self.make_disk(h, f"{name}-{h.vdevs[i]}", fmt=fmt), fmt)
                          for i in range(disks)
                          for fmt in ["raw" if raw_disk and i == disks - 1 else "qcow2"]]
        for i, (p, fmt) in enumerate(disk_files):
            vdev = h.vdevs[i]
            paths[vdev] = p
            specs.append(f'"{p},{fmt},{vdev},rw"')
        dom_uuid = str(uuidlib.uuid4())
        lines = [f'name = "{name}"', f'uuid = "{dom_uuid}"', f"memory = {memory}",
                 "vcpus = 1", f"disk = [ {', '.join(specs)} ]"]
        if guest:
            kernel, initrd = ensure_guest()
            lines += [f'kernel = "{kernel}"', f'ramdisk = "{initrd}"',
                      f'extra = "{guest_cmdline(tick, append)}"']
        lines += extra_cfg
        cfg = h.root / f"{name}.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        if h.driver == "xl":
            h.xl("create", str(cfg))
            dom = Domain(host=h, name=name, uuid=dom_uuid, disks=paths)
            if not start:  # a dom0 knows only running domains: domsnap must see it first
                self.wait_inventory(dom)
                dom.destroy()
        elif start:
            h.cli("domain-create", str(cfg), check=True)
        else:
            from domsnap.xlcfg import load_domain_config
            from schemas.config import DomainConfig  # noqa: F401
            from workers.drivers.qemu import QemuDriver
            from workers.hostio.runner import SubprocessRunner

            QemuDriver(h.state_dir, SubprocessRunner()).define(load_domain_config(str(cfg)))
        dom = Domain(host=h, name=name, uuid=dom_uuid, disks=paths)
        self.domains.append(dom)
        if guest and start:
            wait_for_tick(dom.console, 2, timeout=180)
        return dom

    def retire(self, dom: Domain) -> None:
        """Shut a test's domain off once the test is done with it (the suite's conftest
        does it for the domains each test created). Idle domains are not free: every
        one is a QEMU process, and the xl stand-in's ``xl list`` (each xl host's
        heartbeat, every second) asks each of them for its state; left running until
        the session's end, some 80 of them took a core of this 2-core host."""
        try:
            if dom.host.driver == "xl":
                dom.host.xl("destroy", dom.name, check=False)
            else:
                pid = dom.pid()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
        except (OSError, subprocess.SubprocessError):
            pass  # gone already, or its host with it: the session's teardown kills the rest

    def wait_inventory(self, dom: Domain, timeout: float = 30) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                host, _ = client.resolve(dom.uuid)
                if host == dom.host.name:
                    return
            except Exception:  # noqa: BLE001 - retried until the deadline
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{dom.name} never appeared in the inventory")
            time.sleep(0.2)

    def destroy_all(self) -> None:
        for h in self.hosts.values():
            dom_root = h.xen / "domains" if h.driver == "xl" else h.state_dir / "domains"
            if not dom_root.is_dir():
                continue
            for d in dom_root.iterdir():
                pid_file = d / "qemu.pid"
                if pid_file.exists():
                    try:
                        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass

    def cleanup_redis(self) -> None:
        for key in self.redis.scan_iter(f"{self.prefix}:*", count=1000):
            self.redis.delete(key)


def guest_cmdline(tick: float = 1.0, append: str = "") -> str:
    """The test guest's kernel command line (``append``: more options, e.g. the
    benchmarks' ``domsnap.ticker=`` and ``domsnap.dirty=``)."""
    return " ".join(["console=ttyS0 quiet panic=-1", f"domsnap.tick={tick}",
                     *([append] if append else [])])


def unique_name(prefix: str) -> str:
    """A domain/snapshot name no other test of the session uses."""
    return f"{prefix}-{uuidlib.uuid4().hex[:6]}"


def listed_domain(cluster: Cluster, host: str, prefix: str, *, disks: int = 2) -> Domain:
    """A running guestless domain with a unique name, already in the inventory."""
    dom = cluster.create_domain(host, unique_name(prefix), guest=False, disks=disks)
    cluster.wait_inventory(dom)
    return dom


def succeeded(client: Client, job_id: str, timeout: float = 120) -> JobRecord:
    """Wait for a job and insist that it succeeded (the error is the failure message)."""
    job = client.wait(job_id, timeout=timeout)
    assert job.state == "succeeded", f"job {job.op} {job.name}: {job.error}"
    return job
