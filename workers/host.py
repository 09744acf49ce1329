"""The per-process context of a worker: settings, store, driver, disk tools, host files."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from functools import lru_cache

from domsnap.errors import InvalidInput
from domsnap.settings import Settings, get_settings
from domsnap.store import Store
from workers.block.lvm import Lvm
from workers.block.qemu_img import QemuImg
from workers.drivers.base import Driver
from workers.hostio.hostfiles import HostFiles
from workers.hostio.runner import Runner, SubprocessRunner

log = logging.getLogger(__name__)


@dataclass
class Host:
    settings: Settings
    store: Store
    driver: Driver
    img: QemuImg
    lvm: Lvm
    files: HostFiles
    runner: Runner

    @property
    def name(self) -> str:
        return self.settings.host


def make_driver(settings: Settings, runner: Runner, *, img: QemuImg, lvm: Lvm) -> Driver:
    if settings.driver == "xl":
        from workers.drivers.xl import XlDriver

        if shutil.which(settings.xl_binary) is None:
            raise InvalidInput(f"driver 'xl' needs {settings.xl_binary!r} on PATH",
                               field="driver")
        return XlDriver(settings.state_dir, runner, img=img, lvm=lvm, binary=settings.xl_binary,
                        xen_run_dir=settings.xen_run_dir, timeout=settings.command_timeout_s,
                        xen_python_dir=settings.xen_python_dir,
                        memory_strategy=settings.xl_memory_strategy,
                        space_reserve_mb=settings.space_reserve_mb)
    if settings.driver == "qemu":
        from workers.drivers.qemu import QemuDriver

        return QemuDriver(settings.state_dir, runner, binary=settings.qemu_binary,
                          accel=settings.qemu_accel, timeout=settings.command_timeout_s,
                          memory_bandwidth=settings.qemu_memory_bandwidth,
                          run_dir=settings.run_dir)
    if settings.driver == "null":  # benchmarks and contract tests only: never auto-detected
        from workers.drivers.null import WARNING, NullDriver

        log.warning(WARNING)
        return NullDriver(settings.state_dir, runner, img=img)
    raise InvalidInput(f"driver {settings.driver!r} is not available in this build",
                       field="driver")


def build_host(settings: Settings) -> Host:
    runner = SubprocessRunner()
    img = QemuImg(runner, binary=settings.qemu_img, timeout=settings.command_timeout_s)
    lvm = Lvm(runner, timeout=settings.command_timeout_s, binary=settings.lvm_binary,
              snapshot_size=settings.lvm_snapshot_size)
    return Host(
        settings=settings,
        store=Store.from_url(settings.redis_url, prefix=settings.key_prefix,
                             job_ttl_s=settings.job_ttl_s),
        driver=make_driver(settings, runner, img=img, lvm=lvm),
        img=img,
        lvm=lvm,
        files=HostFiles(settings.state_dir, settings.snapshots),
        runner=runner,
    )


@lru_cache(maxsize=1)
def current_host() -> Host:
    """The context of this worker process (built on first use, after fork)."""
    return build_host(get_settings())
