"""A stand-in for Xen 4.17's ``xl`` whose domains are real QEMU processes.

domsnap's xl driver runs ``xl`` and talks QMP to ``<run dir>/qmp-libxl-<domid>``.
This machine has no Xen, so the tests put this ``xl`` first on PATH. For the verbs
the driver uses it prints what xl 4.17 prints, exits as xl exits, and keeps a device
model socket that behaves like Xen's QEMU (block nodes ``<vdev>-<format>`` over an
automatically named ``#blockNNN`` protocol node). Stdlib only, no domsnap imports.

Verbs: create, list [-l], domid, domname, pause, unpause, destroy, save [-c] [-p],
restore [-p] [-e], migrate [-C CFG] [-s CMD] [-e] [-F] [-p] [-D] [--debug], reboot [-w],
config-update. Global options ``-v`` (repeatable: ``-vvv`` prints the libxl debug lines
the stand-in knows, around a suspend and a resume), ``-t``, ``-T`` (passed on in
``migrate``'s rune), ``-f``, ``-N`` (accepted). ``create`` and ``restore`` leave a
monitor daemon per domain, as xl does, that rebuilds the domain from its stored
config when it reboots (tests/xlstandin/monitor.py).

Knobs (environment): XL_STANDIN_ROOT and XL_STANDIN_RUN_DIR (required: the state dir
and the dir playing /var/run/xen), XL_STANDIN_ACCEL (QEMU accelerators, default tcg),
XL_STANDIN_QEMU (default qemu-system-x86_64), XL_STANDIN_SUSPEND_TIMEOUT (seconds a
guest that does not acknowledge a suspend is waited for, default 60 like libxl),
XL_STANDIN_NO_PV_SHADOW (1: a hypervisor built without PV shadow paging, as Debian's
bookworm-security Xen 4.17.7+13: ``xl migrate`` of a PV domain fails at once with
``xc: error: Failed to enable logdirty: 95,22,0 ...`` and ``Migration failed, failed
to suspend at sender.``, exit 1, the guest untouched; HVM/PVH use HAP's log-dirty and
are not refused). Knobs (files, per domain, under ``<root>/domains/<uuid>/``):
``no-suspend`` (the guest never acknowledges a suspend request: ``save`` and
``migrate`` fail after XL_STANDIN_SUSPEND_TIMEOUT, guest left running),
``slow-save`` (seconds a save takes after the suspend, printing progress). Evidence
(not in xl): ``<root>/log/saves.log`` (one line per save that completed),
``<root>/log/migrations.log`` (one line per migration: rc, QEMU's precopy rounds,
stream bytes, PAGE_DATA records, the first record sent after the suspend),
``<root>/log/xl-<name>.log`` (the monitors' output).

Modules: standin (entry point; create, list, domid, domname, pause, unpause,
destroy), saverestore (save, restore), migrate (migrate), stream (the libxl/libxc
stream framing shared by save, restore and migrate), monitor (the monitor daemon,
reboot, config-update), cli (option parsing, lookups, starting and restoring a
domain), domains (state on disk, locking, QEMU processes), xlcfg (xl.cfg subset,
libxl-shaped config, libxl's JSON layout), qmp (a tiny QMP client).

Facts taken from xl's sources rather than assumed:
- ``xl save`` opens FILE O_WRONLY|O_CREAT|O_TRUNC with mode 0644 (xl_saverestore.c),
  so a new file gets 0644 & ~umask and an existing file keeps its mode.
- The config in the save file is counted with its trailing NUL (strlen + 1) and
  has no ``c_info.domid`` (this reproduces the captured header length, 1088).
- ``xl create`` exits with -rc: a taken name is libxl's ERROR_FAIL, exit 3 (and
  it uses up a domid: libxl makes the domain before it checks the name);
  ``xl restore`` exits 1 for the same failure.
- A numeric domid nobody has passes xl's find_domain; then ``list`` says
  "Error: Domain 'N' does not exist.", ``pause``/``unpause`` log a libxl error and
  exit 0 (xl ignores the result), ``destroy`` fails with rc=-21, ``save`` with
  "unable to retrieve domain configuration".

Messages come from real xl 4.17 output (reference/xl-4.17-captures.txt) or, where
none was captured, from the upstream sources (tools/xl/xl_saverestore.c,
xl_vmcontrol.c, xl_migrate.c, xl_cmdtable.c, xl_info.c, xl_misc.c, xl_utils.c, xl.c;
tools/libs/light/ libxl_domain.c, libxl_dom_suspend.c, libxl_stream_write.c,
libxl_stream_read.c, libxl_save_callout.c, libxl_exec.c, libxl_utils.c,
libxl_event.c; tools/libs/guest/xg_sr_save.c, xg_sr_restore.c, xg_sr_common.c):
libxl's line numbers in those, the ``ao`` addresses of the debug lines and the wording
of libxl's stream-read errors are best effort.

Where the stand-in differs from Xen (accepted, on purpose):
- ``xl save -p``: QEMU inactivates its block nodes when a migration completes and
  7.2 offers no way back but ``cont``; the stand-in does ``cont`` and at once
  ``stop``, so the vCPUs run for an instant after the memory image was taken. Xen
  keeps the domain paused throughout.
- After the xl header comes libxl's stream v2 with libxc's records in their real
  framing (stream.py), but the memory in the PAGE_DATA records is QEMU's migration
  stream cut into pages (pfns numbered in order, the last page zero-padded), and the
  other libxc records (CPUID/MSR policy, P2M frames, vCPU contexts, HVM context)
  carry fixed blobs of the right shape. ``xl restore`` checks the framing and feeds
  the PAGE_DATA payload to QEMU's incoming migration.
- ``xl migrate``: the live rounds are QEMU's precopy (the guest runs meanwhile); the
  suspend is the moment QEMU stops the vCPUs (``pause-before-switchover``); after 5
  rounds QEMU's downtime limit is raised so it stops at the next (libxc's policy).
  Then ``cont`` + ``stop`` reactivates the block nodes (see ``xl save -p`` below):
  the vCPUs run for an instant after the memory image was taken. A guest that does
  not suspend is found only when QEMU has already stopped its vCPUs for the switch:
  the migration is cancelled and QEMU runs them again at once (Xen never stops them).
  ``--debug`` (libxc's verify pass) adds ``-d`` to the rune but sends no VERIFY
  record; ``-T`` adds no timestamps to the sender's own lines. The save helper that
  dies of SIGPIPE when the receiver goes away is the xl process itself here (its pid
  is the one in the message).
- PV/PVH suspend: a guest "acknowledges" unless ``<root>/domains/<uuid>/no-suspend``
  exists or the domain is paused (a paused PV guest cannot answer the xenstore
  request on Xen either); then libxl's timeout runs out (XL_STANDIN_SUSPEND_TIMEOUT).
- Disks with backendtype=phy are attached through QEMU like qdisk ones (nodes named
  ``<vdev>-<format>``); on Xen blkback serves them and the device model never sees
  them. cdroms are not attached at all.
- Run states are r----- (running) or --p--- (anything else); never -b----; ---ss- for a
  domain whose `xl save` died after the suspend (`xl unpause` does not resume it).
- A uuid already in use by a live domain is refused (Xen would allow it): the
  stand-in keeps its state per uuid.
- Destroy stops QEMU with SIGTERM (a clean exit, images closed).
- A reboot ends the QEMU process (``-no-reboot``) and the monitor builds the new one at
  once: ``xl list`` never shows the rebooting domain shut down (``---s-r``).
- Test hooks, not in xl: see the knobs above.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.xlstandin.cli import (
    GLOBALS,
    err,
    find_domain,
    help_text,
    make_domain,
    opts,
    out,
    xl_config,
)
from tests.xlstandin.domains import Dom, Env, Fail, domains, kill, libxl_error, wait_finalized
from tests.xlstandin.migrate import cmd_migrate
from tests.xlstandin.monitor import cmd_config_update, cmd_reboot, spawn_monitor
from tests.xlstandin.qmp import QMPFailure
from tests.xlstandin.saverestore import SUSPENDED, cmd_restore, cmd_save
from tests.xlstandin.xlcfg import DOM0_CONFIG, libxl_json

# --------------------------------------------------------------------------- create

def cmd_create(env: Env, args: list[str]) -> int:
    filename = None
    if args and not args[0].startswith("-") and "=" not in args[0]:
        filename, args = args[0], args[1:]
    found, rest = opts(args, "create", "Fnqf:pcdeVA",
                       ["dryrun", "quiet", "defconfig=", "vncviewer", "vncviewer-autopass"], 0)
    flags = {o for o, _ in found}
    for o, a in found:
        if o in ("-f", "--defconfig"):
            filename = a
    extra = []
    for a in rest:
        if "=" in a:
            extra.append(a)
        elif filename is None:
            filename = a
        else:
            out(help_text("create"))
            return 2
    if filename is None:
        raise Fail(6, "Config file not specified and none in save file")
    try:
        text = Path(filename).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Fail(3, f"Failed to read config file: {filename}: {exc.strerror}") from None
    if extra:
        text += "\n" + "\n".join(extra) + "\n"
    if not flags & {"-q", "--quiet"}:
        err(f"Parsing config from {filename}")
    config = xl_config(text, filename)
    if flags & {"-n", "--dryrun"}:
        out(libxl_json(config) + "\n")
        return 0
    dom = make_domain(env, config, paused="-p" in flags, failure_rc=3)
    if "-e" not in flags:
        spawn_monitor(env, dom)
    return 0


# --------------------------------------------------------------------------- list

def cmd_list(env: Env, args: list[str]) -> int:
    found, rest = opts(args, "list", "lvZcn", ["long", "verbose", "context", "cpupool", "numa"],
                       0)
    flags = {o for o, _ in found}
    if flags - {"-l", "--long"}:
        raise Fail(1, "xl (test stand-in): list supports only -l/--long")
    if len(rest) > 1:
        out(help_text("list"))
        return 1
    entries: list[Dom | int]
    if rest:
        target = find_domain(env, rest[0])
        if isinstance(target, int) and target != 0:
            raise Fail(1, f"Error: Domain '{rest[0]}' does not exist.")
        entries = [target]
    else:
        entries = [0, *domains(env)]
    if flags & {"-l", "--long"}:
        items = [{"domid": 0, "config": DOM0_CONFIG} if isinstance(e, int)
                 else {"domid": e.domid, "config": e.config} for e in entries]
        out(libxl_json(items) + "\n\n")
        return 0
    lines = ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
    for e in entries:
        if isinstance(e, int):
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            lines.append(_row("Domain-0", 0, 1024, 2, "r-----", uptime))
            continue
        b_info = e.config["b_info"]
        if (e.dir / SUSPENDED).exists():
            state = "---ss-"
        else:
            state = "r-----" if e.run_state() == "running" else "--p---"
        lines.append(_row(e.name, e.domid, int(b_info.get("target_memkb", 0)) // 1024,
                          len(b_info.get("avail_vcpus", [0])), state, e.cpu_seconds()))
    out("\n".join(lines) + "\n")
    return 0


def _row(name: str, domid: int, mem: int, vcpus: int, state: str, seconds: float) -> str:
    return f"{name:<40} {domid:5d} {mem:5d} {vcpus:5d}     {state}  {seconds:8.1f}"


def cmd_domid(env: Env, args: list[str]) -> int:
    _, rest = opts(args, "domid", "", [], 1)
    name = rest[0]
    if name == "Domain-0":
        out("0\n")
        return 0
    for d in domains(env):
        if d.name == name:
            out(f"{d.domid}\n")
            return 0
    raise Fail(1, f"Can't get domid of domain name '{name}', maybe this domain does not exist.")


def cmd_domname(env: Env, args: list[str]) -> int:
    _, rest = opts(args, "domname", "", [], 1)
    digits = ""
    text = rest[0].lstrip()
    sign = text[:1] if text[:1] in "+-" else ""
    for c in text[len(sign):]:
        if not c.isdigit():
            break
        digits += c
    if not digits:
        raise Fail(1, "Invalid domain id.\n")
    domid = int(sign + digits) % (1 << 32)
    if domid == 0:
        out("Domain-0\n")
        return 0
    for d in domains(env):
        if d.domid == domid:
            out(f"{d.name}\n")
            return 0
    raise Fail(1, f"Can't get domain name of domain id '{domid}', maybe this domain does not "
                  "exist.")


# --------------------------------------------------------------------------- pause, destroy

def cmd_pause(env: Env, args: list[str], *, unpause: bool) -> int:
    verb = "unpause" if unpause else "pause"
    _, rest = opts(args, verb, "", [], 1)
    target = find_domain(env, rest[0])
    if isinstance(target, int):
        if target != 0:  # xl ignores libxl's return code here
            err(libxl_error("libxl_dom.c:45:libxl__domain_type", None,
                            f"unable to get domain type for domid={target}") if unpause else
                libxl_error("libxl_domain.c:593:libxl_domain_pause", target,
                            "Pausing domain: No such process"))
        return 0
    if unpause and (target.dir / SUSPENDED).exists():
        return 0  # unpauses the vCPUs of a domain that stays shut down for its suspend
    with target.control() as q:
        if unpause:
            status = wait_finalized(q)
            if status != "running":
                q.execute("cont")
        else:
            q.execute("stop")
    target.set_state("running" if unpause else "paused")
    return 0


def cmd_destroy(env: Env, args: list[str]) -> int:
    _, rest = opts(args, "destroy", "f", [], 1)
    target = find_domain(env, rest[0])
    if target == 0:
        raise Fail(1, "Not destroying domain 0; use -f to force.\nThis can only be done when "
                      "using a disaggregated hardware domain and toolstack.\n")
    if isinstance(target, int):
        raise Fail(1, libxl_error("libxl_domain.c:1182:libxl__destroy_domid", target,
                                  "Non-existant domain"),
                   libxl_error("libxl_domain.c:1136:domain_destroy_callback", target,
                               "Unable to destroy guest"),
                   libxl_error("libxl_domain.c:1063:domain_destroy_cb", target,
                               "Destruction of domain failed"),
                   "destroy failed (rc=-21)")
    kill(target)
    return 0


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    # C's default, which Python replaces: xl writing to a pipe nobody reads dies of
    # SIGPIPE (exit 141 in a shell), as xl save did when its worker was killed
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = list(sys.argv[1:] if argv is None else argv)
    GLOBALS.verbose, GLOBALS.progress_cr, GLOBALS.timestamps = 0, False, False
    while args and args[0].startswith("-") and len(args[0]) > 1:
        flag = args.pop(0)
        if flag == "--":
            break
        if any(c not in "vftNT" for c in flag[1:]):
            err("unknown global option")
            return 1
        GLOBALS.verbose += flag.count("v")
        GLOBALS.progress_cr |= "t" in flag
        GLOBALS.timestamps |= "T" in flag
    if not args:
        out(help_text(None))
        return 1
    verb, rest = args[0], args[1:]
    try:
        if verb == "help":
            out(help_text(rest[0] if rest else None))
            return 0
        env = Env.from_environ()
        if verb == "create":
            return cmd_create(env, rest)
        if verb == "list":
            return cmd_list(env, rest)
        if verb == "domid":
            return cmd_domid(env, rest)
        if verb == "domname":
            return cmd_domname(env, rest)
        if verb in ("pause", "unpause"):
            return cmd_pause(env, rest, unpause=verb == "unpause")
        if verb == "destroy":
            return cmd_destroy(env, rest)
        if verb == "save":
            return cmd_save(env, rest)
        if verb == "restore":
            return cmd_restore(env, rest)
        if verb == "migrate":
            return cmd_migrate(env, rest)
        if verb == "reboot":
            return cmd_reboot(env, rest)
        if verb == "config-update":
            return cmd_config_update(env, rest)
        if verb in XL_VERBS:
            err(f"xl (test stand-in): '{verb}' is a real xl command that the test stand-in "
                "does not implement")
            return 1
        err("command not implemented")
        return 1
    except Fail as exc:
        err(*exc.lines)
        return exc.rc
    except QMPFailure as exc:  # QEMU refused or vanished mid-command
        err(f"xl (test stand-in): QMP: {exc}")
        return 1


# Every xl 4.17 subcommand (xl_cmdtable.c), to tell "not in xl" from "not in the stand-in".
XL_VERBS = frozenset("""
create config-update list destroy shutdown reboot pci-attach pci-detach pci-list
pci-assignable-add pci-assignable-remove pci-assignable-list pause unpause console vncviewer
save migrate restore migrate-receive remus dump-core cd-insert cd-eject mem-max mem-set
button-press vcpu-list vcpu-pin vcpu-set vm-list info sharing sched-credit sched-credit2
sched-rtds domid domname rename trigger sysrq debug-keys dmesg top network-attach
network-list network-detach channel-list block-attach block-list block-detach vtpm-attach
vtpm-list vtpm-detach vdispl-attach vdispl-list vdispl-detach vsnd-attach vsnd-list
vsnd-detach vkb-attach vkb-list vkb-detach usbctrl-attach usbctrl-detach usbdev-attach
usbdev-detach usb-list uptime claims tmem-list cpupool-create cpupool-list cpupool-destroy
cpupool-rename cpupool-cpu-add cpupool-cpu-remove cpupool-migrate cpupool-numa-split
getenforce setenforce loadpolicy remus devd psr-hwinfo psr-cmt-attach psr-cmt-detach
psr-cmt-show psr-cat-set psr-cat-show psr-mba-set psr-mba-show usbdev-list qemu-monitor-command
set-parameters dt-overlay
""".split())
