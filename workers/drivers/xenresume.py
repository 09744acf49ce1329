"""Resume a Xen domain that a suspend left shut down (``xl list``: ``---ss-``).

``xl`` has no verb for it: after ``xl save`` died between the guest's suspend and its
own resume, ``xl unpause`` only unpauses the vCPUs of a domain that stays shut down
for its suspend. What brings it back is what libxl itself does when a save or a
migration fails ("resuming domain", ``libxl__domain_resume(gc, domid,
suspend_cancel=1)`` in ``libxl_dom_suspend.c``): ``xc_domain_resume(xch, domid, 1)``
(a cooperative resume: the guest's suspend hypercall returns "cancelled" and it
carries on where it was) and then ``xs_resume_domain`` (xenstored forgets the
shutdown). Both are in Xen's own Python bindings, which Debian's ``xen-utils-4.17``
installs under ``/usr/lib/xen-4.17/lib/python`` (``xen.lowlevel.xc.domain_resume(dom,
fast)``: "Resume execution of a suspended domain"; ``xen.lowlevel.xs.resume_domain``).
An HVM domain's device model is resumed by the driver (QMP ``cont``) before this runs,
in libxl's order.

Run as ``python -m workers.drivers.xenresume [--bindings DIR] DOMID`` (the driver
does, through its runner, with a timeout): a separate process, so a binding that
crashes cannot take the worker with it. DIR (``DOMSNAP_XEN_PYTHON_DIR``) is where the
bindings are; by default the newest ``/usr/lib/xen-*/lib/python``. Exit 0 on success,
2 for a bad argument, 1 with the error on stderr otherwise.
"""

from __future__ import annotations

import glob
import importlib
import re
import sys

_DOMID = re.compile(r"[1-9][0-9]{0,4}\Z")  # a domU: 1..32751 (DOMID_FIRST_RESERVED)


def default_bindings_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/xen-*/lib/python"))
    return found[-1] if found else None


def resume(domid: int, bindings: str | None) -> None:
    where = bindings or default_bindings_dir()
    if where:
        sys.path.insert(0, where)
    xc = importlib.import_module("xen.lowlevel.xc")
    xs = importlib.import_module("xen.lowlevel.xs")
    xc.xc().domain_resume(domid, 1)
    xs.xs().resume_domain(domid)


def main(argv: list[str]) -> int:
    args = argv[1:]
    bindings = None
    if len(args) == 3 and args[0] == "--bindings":
        bindings, args = args[1], args[2:]
    if len(args) != 1 or not _DOMID.match(args[0]) or int(args[0]) >= 0x7FF0:
        print("usage: python -m workers.drivers.xenresume [--bindings DIR] DOMID "
              "(a domU's id)", file=sys.stderr)
        return 2
    try:
        resume(int(args[0]), bindings)
    except Exception as exc:  # noqa: BLE001 - the binding's errors, reported to the driver
        print(f"resuming domain {args[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
