"""xl's domain monitor, ``xl reboot`` and ``xl config-update``, in the stand-in.

What real xl does (tools/xl/xl_vmcontrol.c, Xen 4.17):

- ``xl create`` and ``xl restore`` (unless ``-e``) daemonize a monitor (``create_domain``:
  ``do_daemonize("xl-<name>")``, its output to ``/var/log/xen/xl-<name>.log``) that
  waits for the domain's death (``libxl_evenable_domain_death``).
- On a shutdown for reboot (``xl reboot`` asks a PV guest through xenstore, or the guest
  reboots itself: both are ``LIBXL_SHUTDOWN_REASON_REBOOT``), ``handle_domain_death``
  takes the ``on_reboot`` action (default ``restart``): ``reload_domain_config`` uses the
  ``"xl"`` userdata that ``xl config-update`` stored (xl.cfg text; used once, then
  unlinked), else ``libxl_retrieve_domain_configuration`` (libxl_domain.c): the
  ``"libxl-json"`` userdata libxl stored when it built the domain, merged with xenstore,
  where a non-removable disk keeps the JSON's ``pdev_path`` (``libxl_device_disk_merge``
  in libxl_disk.c). Then it destroys the domain and builds a new one (a new domid, the
  same name and uuid) from that config, and watches the new one.
- On a shutdown for suspend (``xl save``) it logs "Domain has suspended." and exits: after
  a save nobody acts on ``on_reboot`` any more.
- ``xl config-update DOM CFG`` parses CFG and stores its text as the ``"xl"`` userdata
  (``main_config_update`` in xl_misc.c); ``xl list -l`` still shows the libxl-json view.

- On any other shutdown (poweroff, crash, watchdog, soft reset) it takes that
  reason's ``on_*`` action the same way (defaults: ``on_poweroff``/``on_crash``/
  ``on_watchdog`` destroy, ``on_soft_reset`` soft-reset); ``preserve`` leaves the domain
  shut down, ``coredump-*`` dump its core first. A monitor that has exited acts on
  nothing: the domain stays listed shut down (``---sr-`` after a reboot) until somebody
  destroys it.

In the stand-in the hypervisor's side (recording that and why a domain shut down) is
tests/xlstandin/hypervisor.py: QEMU runs with ``-no-reboot -no-shutdown``, so a reset
(the guest's own, or ``system_reset`` for ``xl reboot``) stops the vCPUs and keeps the
domain, and the reason lands in ``domains/<uuid>/shutdown``, which this monitor polls
as libxl waits for the domain-death event. The stand-in does not write cores
(``coredump-*`` log the dump and go on), and rebuilds a fresh domain for
``rename-restart`` and ``soft-reset``. The libxl-json userdata is
``domains/<uuid>/config.json``; the ``"xl"`` userdata ``domains/<uuid>/userdata-xl``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.xlstandin import hypervisor
from tests.xlstandin.cli import err, find_domain, make_domain, opts, xl_config
from tests.xlstandin.domains import Dom, Env, Fail, _load, daemonize, domains, kill
from tests.xlstandin.qmp import QMPFailure

USERDATA_XL = "userdata-xl"  # /var/lib/xen/userdata-d.<domid>.<uuid>.xl
SUSPEND_SEEN = "suspend-seen"  # written by `xl save` once the guest suspended



def spawn_monitor(env: Env, dom: Dom) -> None:
    """Daemonize a monitor for ``dom`` (its own session, stdio on its log file: it holds
    none of the caller's pipes, so whoever ran ``xl`` sees it end)."""
    daemonize(env.root / "log" / f"xl-{dom.name}.log", lambda: watch(env, dom))


def _say(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} xl: {text}\n")
    sys.stderr.flush()


def watch(env: Env, dom: Dom) -> int:
    """The monitor's loop (``create_domain``'s event loop with ``handle_domain_death``):
    follow the domain through its restarts until it is gone or the action ends it."""
    while True:
        _say(f"Waiting for domain {dom.name} (domid {dom.domid}) to die [pid {os.getpid()}]")
        why = _wait_death(dom)
        if why == "suspend":
            _say("Domain has suspended.")
            _say("Done. Exiting now")
            return 0
        if why not in hypervisor.REASONS:
            _say(f"Domain {dom.domid} has been destroyed.")
            return 0
        code = hypervisor.REASONS[why]
        _say(f"Domain {dom.domid} has shut down, reason code {code} 0x{code:x}")
        action = action_for(dom.config, why)
        _say(f"Action for shutdown reason code {code} is {action}")
        if action.startswith("coredump-"):
            # the stand-in writes no core (xl: "No point crying over spilled milk")
            _say(f"dumping core to /var/lib/xen/dump/{dom.name}")
            action = "destroy" if action == "coredump-destroy" else "restart"
        if action == "preserve":
            _say("Done. Exiting now")  # the domain stays shut down until destroyed
            return 0
        if action not in ("restart", "rename-restart", "soft-reset"):
            _say(f"Domain {dom.domid} needs to be cleaned up: destroying the domain")
            kill(dom)
            _say("Done. Exiting now")
            return 0
        # rename-restart: xl keeps the old domain under a new name and uuid, soft-reset
        # re-uses its memory; the stand-in rebuilds a fresh domain for both
        config = reload_config(dom)
        _say(f"Domain {dom.domid} needs to be cleaned up: destroying the domain")
        kill(dom)
        _say("Done. Rebooting now")
        try:
            dom = make_domain(env, config, paused=False, failure_rc=3)
        except Fail as exc:
            for line in exc.lines:
                _say(line)
            return 1


# libxl's defaults for an xl.cfg that names no action; libxl's JSON (the stored config)
# leaves out an action equal to "destroy"
DEFAULT_ACTIONS = {"poweroff": "destroy", "reboot": "restart", "suspend": "destroy",
                   "crash": "destroy", "watchdog": "destroy", "soft_reset": "soft-reset"}
_JSON_ACTIONS = {"destroy": "destroy", "restart": "restart", "restart_rename": "rename-restart",
                 "preserve": "preserve", "coredump_destroy": "coredump-destroy",
                 "coredump_restart": "coredump-restart", "soft_reset": "soft-reset"}


def action_for(config: dict[str, Any], reason: str) -> str:
    """The ``on_<reason>`` action of a libxl-shaped config, in xl.cfg spelling."""
    raw = config.get(f"on_{reason}")
    if raw is None:
        return "destroy"  # the JSON omits the default value
    return _JSON_ACTIONS.get(str(raw), "destroy")


def _wait_death(dom: Dom) -> str:
    """``suspend``, a shutdown reason the hypervisor recorded, or ``destroyed`` (QEMU
    gone): what libxl's domain-death event reports."""
    while True:
        if (dom.dir / SUSPEND_SEEN).exists():
            return "suspend"
        reason = hypervisor.reason_of(dom)
        if reason is not None:
            return reason
        if dom.pid() is None:
            return "destroyed"
        time.sleep(0.05)


def reload_config(dom: Dom) -> dict[str, Any]:
    """xl's reload_domain_config: the ``"xl"`` userdata once, else the stored libxl-json."""
    stored = dom.dir / USERDATA_XL
    try:
        text = stored.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        fresh = _load(dom.env, dom.dir)
        return fresh.config if fresh is not None else dom.config
    _say('"xl" configuration found, using it')
    config = xl_config(text, "<updated>")
    stored.unlink(missing_ok=True)
    return config


# --------------------------------------------------------------------------- verbs

def cmd_reboot(env: Env, args: list[str]) -> int:
    found, rest = opts(args, "reboot", "awF", ["all", "wait"], 0)
    flags = {o for o, _ in found}
    if not rest:
        if flags & {"-a", "--all"}:
            raise Fail(1, "xl (test stand-in): reboot -a is not implemented")
        err("You must specify -a or a domain id.\n")
        return 1
    target = find_domain(env, rest[0])
    domid = target if isinstance(target, int) else target.domid
    err(f"Rebooting domain {domid}")
    if isinstance(target, int):
        raise Fail(1, "reboot failed (rc=-3)")
    try:
        with target.control() as q:  # the guest answers the xenstore request: it resets
            q.execute("system_reset")
    except QMPFailure:
        if target.pid() is not None:  # not merely QEMU ending before it answered
            raise
    if flags & {"-w", "--wait"}:
        _wait_shutdown(env, domid)
    return 0


def _wait_shutdown(env: Env, domid: int) -> None:
    """xl's ``-w``: until the domain is shut down (with no monitor it stays so) or gone."""
    while True:
        dom = next((d for d in domains(env) if d.domid == domid), None)
        if dom is None:
            err(f"Domain {domid} has been destroyed.")
            return
        reason = hypervisor.reason_of(dom)
        if reason is not None:
            err(f"Domain {domid} has been shut down, reason code {hypervisor.REASONS[reason]}")
            return
        time.sleep(0.05)


def cmd_shutdown(env: Env, args: list[str]) -> int:
    """``xl shutdown [-w] DOM``: a PV guest obeys the xenstore request by shutting down
    (``SCHEDOP_shutdown``, reason poweroff); the stand-in acts for its hypercall."""
    found, rest = opts(args, "shutdown", "awFc", ["all", "wait"], 0)
    flags = {o for o, _ in found}
    if not rest:
        if flags & {"-a", "--all"}:
            raise Fail(1, "xl (test stand-in): shutdown -a is not implemented")
        err("You must specify -a or a domain id.\n")
        return 1
    target = find_domain(env, rest[0])
    domid = target if isinstance(target, int) else target.domid
    err(f"Shutting down domain {domid}")
    if isinstance(target, int):
        raise Fail(1, "shutdown failed (rc=-3)")
    hypervisor.guest_shutdown(target, "poweroff")
    if flags & {"-w", "--wait"}:
        _wait_shutdown(env, domid)
    return 0


def cmd_config_update(env: Env, args: list[str]) -> int:
    if not args:
        err("xl config-update requires a domain argument")
        return 1
    err("WARNING: xl now has better capability to manage domain configuration, avoid "
        "using this command when possible")
    target = find_domain(env, args[0])
    rest = args[1:]
    filename = None
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        filename, rest = rest[0], rest[1:]
    found, rest = opts(rest, "config_update", "dqf:", ["defconfig="], 0)
    for o, a in found:
        if o in ("-f", "--defconfig"):
            filename = a
    extra = [a for a in rest if "=" in a]
    if filename is None:
        raise Fail(1, "Config file not specified")
    try:
        text = Path(filename).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Fail(253, f"Failed to read config file: {filename}: {exc.strerror}") from None
    if extra:
        text += "\n" + "\n".join(extra) + "\n"
    xl_config(text, filename)  # parse_config_data: a bad file ends xl here
    if isinstance(target, int):
        raise Fail(1, f"setting dom{target} configuration", "failed to update configuration")
    err(f"setting dom{target.domid} configuration")
    tmp = target.dir / f"{USERDATA_XL}.tmp"
    tmp.write_text(text)
    os.replace(tmp, target.dir / USERDATA_XL)
    return 0
