"""An ``xl save`` that outlived the worker which started it.

The xl driver runs ``xl save``/``restore``/``create`` so that they survive the worker
(``outlive=True`` in :mod:`workers.hostio.runner`): a worker SIGKILLed mid-save used to
take ``xl save`` with it (SIGPIPE on its stderr pipe), leaving the guest suspended with
its vCPUs frozen and a partial save file. Now the save runs on; whoever recovers the
operation (start-up recovery, the host's guard) first waits for it here, within the
timeout the dead worker's runner would have enforced (counted from the process's start),
and kills its process group at that bound; then the domain is resumed or restored and
the operation rolled back as before.

The saves are found in ``/proc``: a process whose argv is ``... xl [opts] save [-c|-p]
DOM FILE [CFG]`` (:func:`save_target` is the pure part). A live memory snapshot
(:mod:`workers.drivers.xllive`) is an ``xl [opts] migrate -s RUNE DOM HOST`` and its
receiver (``... -m workers.drivers.xlreceive .../domid-DOM.*.request.json``): both are
waited for by domid, the receiver because its disk transaction may still be running.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from domsnap.errors import Refused

if TYPE_CHECKING:
    from workers.drivers.xl import XlDriver

log = logging.getLogger("domsnap.xl")


def save_target(argv: list[str], binary: str) -> tuple[str, str] | None:
    """``(DOM, FILE)`` if ``argv`` is an ``xl save`` run through ``binary`` (its name, or
    a script of that name run by an interpreter), else None."""
    name = os.path.basename(binary)
    for i, arg in enumerate(argv[:3]):
        if os.path.basename(arg) != name:
            continue
        rest = argv[i + 1:]
        while rest and rest[0].startswith("-"):  # xl's global options: -v, -N, ...
            rest = rest[1:]
        if rest and rest[0] == "migrate":  # xl migrate [-s CMD] [-C CFG] [...] DOM HOST
            args, positional = rest[1:], []
            while args:
                arg, args = args[0], args[1:]
                if arg in ("-s", "-C") and args:
                    args = args[1:]  # the option's value
                elif not arg.startswith("-"):
                    positional.append(arg)
            return (positional[0], "") if len(positional) >= 2 else None
        if not rest or rest[0] != "save":
            return None
        positional = [a for a in rest[1:] if not a.startswith("-")]
        return (positional[0], positional[1]) if len(positional) >= 2 else None
    return None


RECEIVER = "workers.drivers.xlreceive"


def receiver_domid(argv: list[str]) -> str | None:
    """The domid of a live-snapshot receiver (``python -m workers.drivers.xlreceive
    .../domid-N.<tag>.request.json ...``: :mod:`workers.drivers.xllive` names it so)."""
    if RECEIVER not in argv[:4]:
        return None
    at = argv.index(RECEIVER)
    name = os.path.basename(argv[at + 1]) if len(argv) > at + 1 else ""
    if not name.startswith("domid-"):
        return None
    return name[len("domid-"):].split(".", 1)[0] or None


def _argv(pid: int, proc: Path) -> list[str] | None:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None


def _age_s(pid: int, proc: Path) -> float | None:
    """Seconds since ``pid`` started, or None if it is gone (or a zombie)."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        uptime = float((proc / "uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    if fields[0] == "Z":
        return None
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def running_saves(binary: str, *, domid: int | None = None, file: Path | None = None,
                  proc: Path = Path("/proc")) -> list[int]:
    """pids of the ``xl save`` processes of domain ``domid`` or into ``file``; for a
    ``domid``, its ``xl migrate`` (a live snapshot) and that one's receiver too."""
    want_file = os.path.abspath(file) if file is not None else None  # (migrate: no file)
    found = []
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        argv = _argv(int(entry.name), proc)
        target = save_target(argv, binary) if argv else None
        receiver = receiver_domid(argv) if argv else None
        if receiver is not None:  # its disk transaction may still be running
            target = (receiver, "")
        if target is None:
            continue
        if (domid is not None and target[0] == str(domid)) or \
                (want_file is not None and os.path.abspath(target[1]) == want_file):
            found.append(int(entry.name))
    return sorted(found)


def wait_for_saves(binary: str, *, timeout: float, domid: int | None = None,
                   file: Path | None = None, proc: Path = Path("/proc")) -> int:
    """Wait for every ``xl save`` of the domain (or into the file) to end, each within
    ``timeout`` of its start; kill the process group of one that runs past that.
    Returns how many were found."""
    pids = running_saves(binary, domid=domid, file=file, proc=proc)
    for pid in pids:
        log.warning("an xl save (pid %d) of %s outlived its worker: waiting for it", pid,
                    f"domid {domid}" if domid is not None else file)
        while (age := _age_s(pid, proc)) is not None:
            if age > timeout:
                log.error("xl save pid %d ran past its %gs timeout: killed", pid, timeout)
                try:
                    os.killpg(pid, signal.SIGKILL)  # it leads its own session
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.1)
    return len(pids)


def resume_suspended(drv: XlDriver, uuid: str) -> bool:
    """Resume the domain if it is shut down for a suspend that nobody resumed (an
    ``xl save`` or ``xl migrate`` that died after the guest suspended: ``---ss-``), as
    libxl does after a failed save: an HVM domain's device model first (QMP ``cont``),
    then the domain (:mod:`workers.drivers.xenresume`, in its own process). Returns
    whether there was anything to resume; raises if the domain is still suspended after."""
    found = drv._lookup(uuid)
    if found is None or found[1] != "suspended":
        return False
    domid = found[0]
    if drv.registry.get(uuid).config.type == "hvm" and drv._has_qmp(domid):
        with drv._qmp(domid) as q:
            q.execute("cont")
    bindings = ["--bindings", str(drv.xen_python_dir)] if drv.xen_python_dir else []
    drv.runner([sys.executable, "-m", "workers.drivers.xenresume", *bindings, str(domid)],
               timeout=60)
    after = drv._lookup(uuid)
    if after is not None and after[1] == "suspended":
        raise Refused(f"domain {uuid} is still suspended after the resume", domain=uuid)
    log.warning("domain %s (domid %s) was left suspended by a save that died; resumed",
                uuid, domid)
    return True
