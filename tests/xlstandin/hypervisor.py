"""The part of Xen that is not xl: a domain's shutdown, recorded whoever listens.

On Xen a guest that reboots, powers off or crashes (``SCHEDOP_shutdown``), or is
asked to by ``xl reboot``/``xl shutdown`` and obeys, is *shut down* by the
hypervisor: it keeps its domid, memory and device model, ``xl list`` shows it with
the ``s`` flag and the reason letter (``list_domains`` in tools/xl/xl_info.c:
``"-rscwS"[reason]`` = poweroff, reboot, suspend, crash, watchdog, soft_reset), and
it stays so until a toolstack destroys it. Acting on the shutdown (``on_reboot``
...) is the job of the domain's ``xl create`` monitor (tests/xlstandin/monitor.py),
not of the hypervisor: with no monitor (it exits at the first suspend) the domain
stays listed as shut down, e.g. ``---sr-`` after a reboot.

The stand-in mirrors that with two pieces:

- QEMU runs with ``-no-reboot -no-shutdown``: a reset (the guest's own, or
  ``system_reset`` for ``xl reboot``) becomes a shutdown, and a shutdown stops the
  vCPUs instead of ending QEMU (run state ``shutdown``); the QEMU process, so the
  domain, lives on until ``xl destroy`` (SIGTERM still ends it).
- A small per-domain "hypervisor" daemon, started with QEMU before the guest runs
  (:func:`spawn`), listens on the domain's ``standin-mon-<domid>`` QMP socket for
  QEMU's ``SHUTDOWN`` event and records the reason in ``domains/<uuid>/shutdown``
  (atomically: a reader sees no file or a whole one), as Xen records the shutdown
  code in the domain. ``xl list`` prints the flags from that file, the monitor reads
  it as libxl reads the domain's shutdown reason. The event is only sent to clients
  connected at the time, hence a process that is connected from the start, rather
  than a query afterwards (``query-status`` says ``shutdown`` but not why).

``xl shutdown`` (a PV guest obeys the xenstore request with ``SCHEDOP_shutdown``)
is the stand-in acting for the guest's hypercall: the vCPUs stop and the reason
``poweroff`` is recorded (:func:`guest_shutdown`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from tests.xlstandin.domains import Dom, Fail, daemonize
from tests.xlstandin.qmp import QMP, QMPFailure

SHUTDOWN = "shutdown"  # domains/<uuid>/shutdown: the recorded reason
READY = "hv-ready"  # written once the daemon listens

# libxl_shutdown_reason names and codes; their letters in `xl list`'s state column
REASONS = {"poweroff": 0, "reboot": 1, "suspend": 2, "crash": 3, "watchdog": 4,
           "soft_reset": 5}
LETTERS = "-rscwS"

# QEMU's SHUTDOWN reasons (with -no-reboot a reset is one) as Xen's shutdown reasons.
# host-signal / host-qmp-quit / host-error are QEMU ending (`xl destroy`), no shutdown.
_FROM_QEMU = {"guest-reset": "reboot", "host-qmp-system-reset": "reboot",
              "guest-shutdown": "poweroff", "host-ui": "poweroff", "guest-panic": "crash"}


def reason_of(dom: Dom) -> str | None:
    """The recorded shutdown reason of ``dom``, or None while it is not shut down."""
    try:
        text = (dom.dir / SHUTDOWN).read_text().strip()
    except OSError:
        return None
    return text if text in REASONS else None


def flags_for(reason: str) -> str:
    """``xl list``'s state column for a domain shut down for ``reason``."""
    return f"---s{LETTERS[REASONS[reason]]}-"


def record(dom: Dom, reason: str) -> None:
    """Record the shutdown (first reason wins, as Xen keeps the first shutdown code)."""
    if (dom.dir / SHUTDOWN).exists():
        return
    tmp = dom.dir / f".{SHUTDOWN}.{os.getpid()}"
    tmp.write_text(reason + "\n")
    os.replace(tmp, dom.dir / SHUTDOWN)


def guest_shutdown(dom: Dom, reason: str) -> None:
    """The guest obeyed a shutdown request: its vCPUs stop, the reason is recorded."""
    with dom.control() as q:
        q.execute("stop")
    record(dom, reason)


def spawn(dom: Dom, timeout: float = 15.0) -> None:
    """Start the domain's hypervisor daemon (double fork, own session, stdio on a log
    file, no fd of the caller: whoever ran ``xl`` sees xl end) and wait until it
    listens, so no shutdown can go unrecorded."""
    (dom.dir / READY).unlink(missing_ok=True)
    daemonize(dom.env.root / "log" / f"hv-{dom.domid}.log", lambda: _listen(dom))
    deadline = time.monotonic() + timeout
    while not (dom.dir / READY).exists():
        if time.monotonic() > deadline or dom.pid() is None:
            raise Fail(3, f"xl (test stand-in): the hypervisor of domain {dom.domid} did not "
                          f"start (see log/hv-{dom.domid}.log)")
        time.sleep(0.01)


def _listen(dom: Dom) -> int:
    """Record every shutdown of the domain until its QEMU ends."""
    with QMP(str(dom.env.mon(dom.domid)), timeout=10, greeting_timeout=10) as q:
        (dom.dir / READY).touch()
        with contextlib.suppress(QMPFailure):  # QEMU closed the socket: it exited
            while True:
                event = q.next_event(1.0)
                if event is None or event.get("event") != "SHUTDOWN":
                    continue
                qemu_reason = str(event.get("data", {}).get("reason"))
                reason = _FROM_QEMU.get(qemu_reason)
                sys.stderr.write(f"{time.time():.3f} domain {dom.domid}: QEMU "
                                 f"SHUTDOWN {qemu_reason} -> {reason}\n")
                sys.stderr.flush()
                if reason is not None and dom.dir.is_dir():
                    record(dom, reason)
    return 0
