"""Fault points: where the fault tests SIGKILL a worker, at an exact step.

``DOMSNAP_FAULT=<point>`` in a worker's environment makes the process that reaches
``point(<point>)`` kill its whole process group (the ``domsnap worker`` supervisor and
both pools) with SIGKILL, as a power cut or the OOM killer would. Nothing else
happens: no cleanup runs, no exception is raised. The host-side guard runs in a
session of its own and survives, as do the domains' QEMUs (daemonized).

Only the worker's own environment can arm a point; nothing in a message can. Unset
(production), a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

ENV = "DOMSNAP_FAULT"


def point(name: str, *, qemu: Callable[[], int | None] | None = None) -> None:
    """Die here (the whole worker, SIGKILL) if the fault tests armed this point.

    ``<name>:qemu`` kills the domain's QEMU instead (``qemu`` gives its pid) and
    lets the worker go on, to meet a hypervisor that vanished mid-operation.
    ``<name>:hold`` stops there until the file ``<state dir>/release-<name>`` exists
    (a test takes Redis away meanwhile)."""
    armed = os.environ.get(ENV)
    if armed == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    elif armed == f"{name}:hold":
        # wait here until the test creates <state dir>/release-<name> (at most 10 min)
        flag = os.path.join(os.environ.get("DOMSNAP_STATE_DIR", "."), f"release-{name}")
        deadline = time.monotonic() + 600
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif armed == f"{name}:qemu" and qemu is not None:
        pid = qemu()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.01)  # gone (reaped by init: QEMU is daemonized) before going on
