"""domsnap takes over the ``xl create`` monitor that a suspend ended.

``xl create`` and ``xl restore`` (without ``-e``) leave a daemon per domain that acts
on the domain's shutdowns: ``handle_domain_death`` in tools/xl/xl_vmcontrol.c takes
the config's ``on_poweroff``/``on_reboot``/``on_crash``/``on_watchdog``/
``on_soft_reset`` action. At the first suspend it logs "Domain has suspended." and
exits (Xen 4.17; upstream's "xl: Keep monitoring suspended domain" came later). Every
``xl save`` suspends the guest (``-p`` for a memory snapshot, the save/restore window;
``xl migrate -s`` of the live path too), so after one nobody would act on a
shutdown: seen on Xen 4.17, a memory snapshot then ``xl reboot`` left the domain
``---sr-`` for good.

So the driver records, before it suspends a domain, that this instance (its domid)
has no monitor any more (:meth:`MonitorMarks.lost`: ``<state dir>/xl/nomonitor/
<uuid>.json``, written atomically), and clears it when a path that spawns a real
monitor starts the domain anew (``xl create``, ``xl restore`` without ``-e``: a new
domid is a new instance with its own monitor). The host's guard calls
:meth:`Watcher.round` each round: for each such domain that ``xl list`` shows shut
down it takes the action ``handle_domain_death`` would (:func:`decide`), with xl's
defaults (xl.cfg(5), ``parse_config_data``: on_poweroff destroy, on_reboot restart,
on_watchdog destroy, on_crash destroy, on_soft_reset soft-reset):

* ``destroy``: ``xl destroy``; the domain stays known to domsnap, shut off.
* ``restart``: ``xl destroy``, then ``xl create`` from domsnap's registered config,
  which names the active images (after snapshots, reverts, merges: the config xl's
  own monitor would reload from ``xl config-update``'s copy, see
  :mod:`workers.drivers.xlrestart`). The new instance has a real monitor again.
* ``rename-restart``: ``xl rename`` of the shut-down domain to ``NAME-<UTC time>``
  (xl's ``preserve_domain`` suffix, ``-%Y%m%dT%H%MZ``), then the restart. xl's CLI
  cannot give the kept copy the new uuid ``libxl_domain_preserve`` gives it: it keeps
  the domain's uuid (domsnap follows the instance by name).
* ``preserve``: left shut down, reported once; nothing is done.
* ``coredump-destroy`` / ``coredump-restart``: ``xl dump-core`` to
  ``<dump dir>/NAME`` (xl: ``XEN_DUMP_DIR/NAME``), then destroy or restart; a failed
  dump is logged and the action goes on, as xl does.
* ``soft-reset``: not mirrored. xl does it inside its monitor
  (``libxl_domain_soft_reset``: a new domain that takes over the old one's memory,
  for kexec/kdump); no xl verb exposes it. domsnap restarts the domain instead
  (destroy + create: the guest boots afresh, its memory is lost) and says so in
  the log and the audit entry, rather than leaving the guest down.
* An unknown reason (``?``) is destroyed, as xl destroys one.

A domain shut down for a suspend (``---ss-``) is never acted on (the guard's resume
path: :meth:`workers.drivers.xl.XlDriver.resume_suspended`), nor a dying one, nor one
that an operation holds (its journal or pause marker: the guard's ``busy``) or whose
save/restore window is open. Every xl call goes through the runner with a timeout.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domsnap.errors import DomsnapError
from schemas.config import DomainConfig
from workers.drivers.xlparse import XlListRow, parse_list_rows
from workers.hostio.fsutil import atomic_write

if TYPE_CHECKING:
    from collections.abc import Callable

    from workers.drivers.xl import XlDriver

log = logging.getLogger("domsnap.xl")

# the fifth flag of `xl list` (xl_info.c: "-rscwS"[reason]; "?" for one xl does not know)
REASONS = {"-": "poweroff", "r": "reboot", "s": "suspend", "c": "crash", "w": "watchdog",
           "S": "soft_reset", "?": "unknown"}
DEFAULTS = {"poweroff": "destroy", "reboot": "restart", "crash": "destroy",
            "watchdog": "destroy", "soft_reset": "soft-reset", "unknown": "destroy"}
ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
# libxl's JSON spellings (and xl's enum names) of the same actions
_SPELLINGS = {"restart_rename": "rename-restart", "restart-rename": "rename-restart",
              "coredump_destroy": "coredump-destroy", "coredump_restart": "coredump-restart",
              "soft_reset": "soft-reset"}


@dataclass(frozen=True)
class Decision:
    """What to do with a shut-down domain that has no monitor."""

    reason: str  # poweroff | reboot | crash | watchdog | soft_reset | unknown
    configured: str  # the config's on_<reason> (or xl's default), in xl.cfg spelling
    action: str  # what domsnap does: destroy | restart | rename-restart | preserve
    coredump: bool  # dump the core first
    note: str | None = None  # where domsnap does not do exactly what xl would


def configured_action(config: DomainConfig, reason: str) -> str | None:
    """The config's ``on_<reason>`` in xl.cfg spelling, xl's default if unset; None for
    a value that is no action xl knows (xl would have refused the config)."""
    if reason == "unknown":
        return "destroy"  # xl: "Unknown shutdown reason code %d. Destroying domain."
    raw = config.other.get(f"on_{reason}")
    if raw is None:
        return DEFAULTS[reason]
    value = _SPELLINGS.get(str(raw).strip().lower(), str(raw).strip().lower())
    return value if value in ACTIONS else None


def decide(flags: str, config: DomainConfig) -> Decision | None:
    """The action for a domain with no monitor whose ``xl list`` state is ``flags``;
    None when there is nothing to do (not shut down, dying, shut down for a suspend)."""
    if len(flags) != 6 or flags[3] != "s" or flags[5] == "d":
        return None
    reason = REASONS.get(flags[4])
    if reason is None or reason == "suspend":
        return None
    configured = configured_action(config, reason)
    if configured is None:
        return Decision(reason, str(config.other.get(f"on_{reason}")), "preserve", False,
                        note=f"on_{reason} is not an action xl knows: the domain is left "
                             "shut down")
    coredump = configured.startswith("coredump-")
    action = {"coredump-destroy": "destroy", "coredump-restart": "restart"}.get(
        configured, configured)
    note = None
    if action == "soft-reset":
        action = "restart"
        note = ("soft-reset is done by xl's monitor alone (no xl verb): domsnap restarted "
                "the domain instead (destroy + create; its memory is not kept)")
    elif action == "rename-restart":
        note = "the renamed copy keeps the uuid (xl's CLI cannot give it a new one)"
    return Decision(reason, configured, action, coredump, note)


class MonitorMarks:
    """``<root>/<uuid>.json``: the domain's instance ``domid`` has no xl monitor."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, uuid: str) -> Path:
        return self.root / f"{uuid}.json"

    def get(self, uuid: str) -> dict[str, Any] | None:
        try:
            body = json.loads(self._path(uuid).read_text())
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) and isinstance(body.get("domid"), int) else None

    def lost(self, uuid: str, domid: int, cause: str) -> bool:
        """Record that instance ``domid`` has no monitor; whether it had one until now."""
        old = self.get(uuid)
        if old is not None and old["domid"] == domid:
            return False
        self.put(uuid, {"uuid": uuid, "domid": domid, "cause": cause, "since": time.time()})
        return True

    def put(self, uuid: str, body: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path(uuid), json.dumps(body))

    def clear(self, uuid: str, domid: int | None = None) -> None:
        """Forget the record (only if it is for ``domid``, when given)."""
        old = self.get(uuid)
        if old is not None and (domid is None or old["domid"] == domid):
            self._path(uuid).unlink(missing_ok=True)
        elif old is None:
            self._path(uuid).unlink(missing_ok=True)  # unreadable: nothing to keep

    def uuids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))


class Watcher:
    """One guard round over the domains without a monitor (module docstring)."""

    def __init__(self, driver: XlDriver, marks: MonitorMarks, dump_dir: Path,
                 interval: float = 2.0) -> None:
        self.driver = driver
        self.marks = marks
        self.dump_dir = dump_dir
        self.interval = interval  # at most one `xl list` this often (the guard runs 4/s)
        self._last = 0.0

    def round(self, busy: Callable[[str], bool]) -> list[dict[str, Any]]:
        """Act on every shut-down domain without a monitor; one event per action."""
        uuids = self.marks.uuids()
        if not uuids or time.monotonic() - self._last < self.interval:
            return []
        self._last = time.monotonic()
        rows, bad = parse_list_rows(self.driver._xl("list", timeout=60))
        for exc in bad:
            log.warning("skipping an `xl list` row: %s", exc)
        by_domid = {r.domid: r for r in rows}
        events = []
        for uuid in uuids:
            mark = self.marks.get(uuid)
            if mark is None:
                self.marks.clear(uuid)
                continue
            if busy(uuid) or self.driver.windows.path(uuid).exists():
                continue  # an operation holds it: its step (or recovery) settles it
            try:
                event = self._one(uuid, mark, by_domid.get(int(mark["domid"])))
            except DomsnapError as exc:  # tried again next round; reported once per error
                event = None
                if mark.get("failed") != str(exc):
                    log.error("domain %s: acting on its shutdown failed: %s", uuid, exc)
                    if self.marks.get(uuid) is not None:
                        self.marks.put(uuid, {**mark, "failed": str(exc)})
                    event = {"domain": uuid, "domid": mark["domid"], "outcome": "failed",
                             "error": str(exc)}
            if event is not None:
                events.append({"event": "on-shutdown", **event})
        return events

    def _one(self, uuid: str, mark: dict[str, Any], row: XlListRow | None
             ) -> dict[str, Any] | None:
        entry = self.driver.registry.find(uuid)
        domid = int(mark["domid"])
        if entry is None or row is None or row.name != entry.config.name:
            self.marks.clear(uuid, domid)  # that instance is gone (destroyed, or replaced)
            return None
        decision = decide(row.flags, entry.config)
        if decision is None:
            return None
        base: dict[str, Any] = {"domain": uuid, "name": row.name, "domid": domid,
                                "flags": row.flags, "reason": decision.reason,
                                "configured": decision.configured, "action": decision.action}
        if decision.note:
            base["note"] = decision.note
        if decision.action == "preserve":
            if mark.get("preserved") == row.flags:
                return None  # reported once
            self.marks.put(uuid, {**mark, "preserved": row.flags})
            log.warning("domain %s (domid %d) shut down (%s) with no xl monitor: on_%s is "
                        "preserve, left as it is", row.name, domid, decision.reason,
                        decision.reason)
            return {**base, "outcome": "succeeded"}
        log.warning("domain %s (domid %d) shut down (%s, %s) and its xl monitor exited at a "
                    "suspend: domsnap takes the on_%s action %s%s", row.name, domid,
                    decision.reason, row.flags, decision.reason, decision.configured,
                    f" ({decision.note})" if decision.note else "")
        if decision.coredump:
            base["core"] = self._dump(row.name, domid)
        return {**base, **self._act(uuid, entry.config, domid, row.name, decision)}

    def _dump(self, name: str, domid: int) -> str | None:
        core = self.dump_dir / name
        try:
            self.dump_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.driver._xl("dump-core", str(domid), str(core), timeout=self.driver.timeout)
        except (DomsnapError, OSError) as exc:
            log.error("domain %s: core dump to %s failed (going on, as xl does): %s",
                      name, core, exc)
            return None
        return str(core)

    def _act(self, uuid: str, config: DomainConfig, domid: int, name: str,
             decision: Decision) -> dict[str, Any]:
        if decision.action == "rename-restart":
            kept = f"{name}{time.strftime('-%Y%m%dT%H%MZ', time.gmtime())}"
            self.driver._xl("rename", str(domid), kept, timeout=60)
            log.warning("domain %s (domid %d) kept as %s", name, domid, kept)
        else:
            self.driver._xl("destroy", str(domid), timeout=120)
        self.marks.clear(uuid, domid)
        if decision.action == "destroy":
            return {"outcome": "succeeded"}
        try:
            self.driver.start(uuid, config, paused=False)
        except DomsnapError as exc:
            log.error("domain %s: restart after its shutdown failed; it stays shut off: %s",
                      name, exc)
            return {"outcome": "failed", "error": str(exc)}
        new = self.driver.registry.get(uuid).domid
        log.warning("domain %s restarted on domsnap's config (domid %s -> %s)", name, domid,
                    new)
        return {"outcome": "succeeded", "new_domid": new}
