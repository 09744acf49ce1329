"""Helpers shared by the stand-in's verbs: output, xl's option parsing and help,
domain lookup, config files, and starting a domain (create and restore)."""

from __future__ import annotations

import contextlib
import getopt
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.xlstandin.domains import Dom, Env, Fail, domains, kill, libxl_error, start_qemu
from tests.xlstandin.qmp import QMPFailure
from tests.xlstandin.stream import DHDR_X86_PV, StreamError, StreamReader
from tests.xlstandin.xlcfg import CfgError, parse_xl_cfg, to_libxl

MEM_FD = "xl-standin-mem"

HELP: dict[str, tuple[str, str, str]] = {
    "create": ("[options] <ConfigFile> [options] [vars]", "Create a domain from config file "
               "<filename>", "-h  Print this help.\n-p  Leave the domain paused after it is "
               "created.\n-q, --quiet Quiet.\n-n, --dryrun Dry run - prints the resulting "
               "configuration\n     (deprecated in favour of global -N option)."),
    "list": ("[options] [Domain]", "List information about all/some domains",
             "-l, --long              Output all VM details"),
    "destroy": ("[options] <Domain>", "Terminate a domain immediately",
                "-f                      Permit destroying domain 0"),
    "pause": ("<Domain>", "Pause execution of a domain", ""),
    "unpause": ("<Domain>", "Unpause a paused domain", ""),
    "save": ("[options] <Domain> <CheckpointFile> [<ConfigFile>]",
             "Save a domain state to restore later",
             "-h  Print this help.\n-c  Leave domain running after creating the snapshot.\n"
             "-p  Leave domain paused after creating the snapshot."),
    "restore": ("[options] [<ConfigFile>] <CheckpointFile>", "Restore a domain from a saved "
                "state", "-h  Print this help.\n-p  Do not unpause domain after restoring it.\n"
                "-e  Do not wait in the background for the death of the domain.\n"
                "-d  Enable debug messages."),
    "reboot": ("[options] <-a|Domain>", "Issue a reboot signal to a domain",
               "-a, --all               Reboot all guest domains.\n-h                      Print "
               "this help.\n-F                      Fallback to ACPI reset event for HVM "
               "guests with\n                        no PV drivers.\n-w, --wait              "
               "Wait for guest(s) to reboot."),
    "config-update": ("<Domain> <ConfigFile> [options] [vars]", "Update a running domain's "
                      "saved configuration, used when rebuilding the domain after reboot.\n"
                      "WARNING: xl now has better capability to manage domain configuration, "
                      "avoid using this command when possible", "-h  Print this help.\n"
                      "-f FILE, --defconfig=FILE\n     Use the given configuration file.\n"
                      "-d  Enable debug messages."),
    "migrate": ("[options] <Domain> <host>", "Migrate a domain to another host",
                "-h              Print this help.\n"
                "-C <config>     Send <config> instead of config file from creation.\n"
                "-s <sshcommand> Use <sshcommand> instead of ssh.  String will be passed\n"
                "                to sh. If empty, run <host> instead of ssh <host> xl\n"
                "                migrate-receive [-d -e]\n"
                "-e              Do not wait in the background (on <host>) for the death\n"
                "                of the domain.\n"
                "--debug         Print huge (!) amount of debug during the migration "
                "process.\n"
                "-p              Do not unpause domain after migrating it.\n"
                "-D              Preserve the domain id"),
    "domid": ("<DomainName>", "Convert a domain name to domain id", ""),
    "domname": ("<DomainId>", "Convert a domain id to domain name", ""),
}


@dataclass
class Globals:
    """xl's global options (xl.c): each ``-v`` lowers the log level by one from
    XTL_PROGRESS, so ``-vvv`` shows libxl's debug lines; ``-t`` (progress_use_cr) and
    ``-T`` (timestamps) are passed on to a migration receiver's command line."""

    verbose: int = 0
    progress_cr: bool = False
    timestamps: bool = False


GLOBALS = Globals()


def debug(where: str, domid: int | None, message: str) -> None:
    """A libxl debug line (shown from ``xl -vvv`` on), flushed at once: domsnap reads
    these to time a guest's pause."""
    if GLOBALS.verbose >= 3:
        dom = f"Domain {domid}:" if domid is not None else ""
        err(f"libxl: debug: {where}: {dom}{message}")


def out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def err(*lines: str) -> None:
    for line in lines:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def help_text(verb: str | None) -> str:
    if verb in HELP:
        usage, desc, options = HELP[verb]
        text = f"Usage: xl [-v] {verb} {usage}\n\n{desc}.\n\n"
        return text + (f"Options:\n\n{options}\n" if options else "")
    if verb:
        return f'command "{verb}" not implemented\n'
    lines = ["Usage xl [-vfNtT] <subcommand> [args]", "", "xl full list of subcommands "
             "(test stand-in):", ""]
    lines += [f" {v:<19} {HELP[v][1]}" for v in HELP]
    return "\n".join(lines) + "\n"


def opts(args: list[str], verb: str, short: str, long: list[str],
         reqargs: int) -> tuple[list[tuple[str, str]], list[str]]:
    """xl's def_getopt: GNU getopt, -h prints help, missing arguments exit 2."""
    try:
        found, rest = getopt.gnu_getopt(args, short + "h", [*long, "help"])
    except getopt.GetoptError as exc:
        raise Fail(2, f"option `{exc.opt}' not supported.") from None
    if any(o in ("-h", "--help") for o, _ in found):
        out(help_text(verb))
        raise Fail(0)
    if len(rest) < reqargs:
        out(help_text(verb))
        raise Fail(2, f"'xl {verb}' requires at least {reqargs} argument"
                      f"{'s' if reqargs > 1 else ''}.\n")
    return found, rest


# --------------------------------------------------------------------------- lookups

Target = Dom | int  # a live domain, or a numeric domid nobody has (0 is Domain-0)


def find_domain(env: Env, ident: str) -> Target:
    """xl's find_domain: all digits is a domid (not checked here, as in libxl);
    anything else a name, which must exist."""
    live = domains(env)
    if ident.isdigit():
        domid = int(ident)
        return next((d for d in live if d.domid == domid), domid)
    if ident == "Domain-0":
        return 0
    for d in live:
        if d.name == ident:
            return d
    raise Fail(1, f"{ident} is an invalid domain identifier (rc=-6)")


def read_cfg(path: str, *, what: str, rc: int) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        if what == "override":
            raise Fail(1, "unable to read overridden config file") from None
        raise Fail(rc, f"Failed to read config file: {path}: {exc.strerror}") from None
    return xl_config(text, path)


def xl_config(text: str, source: str) -> dict[str, Any]:
    try:
        return to_libxl(parse_xl_cfg(text, source), source)
    except CfgError as exc:
        raise Fail(exc.rc, *exc.lines) from None


def make_domain(env: Env, config: dict[str, Any], *, paused: bool, failure_rc: int,
                restore_fd: int | None = None) -> Dom:
    """Reserve a domid and start QEMU (restoring memory from ``restore_fd``)."""
    name, uuid = config["c_info"]["name"], config["c_info"]["uuid"]
    with env.lock():
        live = domains(env)
        if name == "Domain-0" or any(d.name == name for d in live):
            domid = env.alloc_domid()  # libxl made the domain before it checked the name
            raise Fail(failure_rc,
                       libxl_error("libxl_domain.c:331:libxl__domain_rename", domid,
                                   f'Domain with name "{name}" already exists.'),
                       libxl_error("libxl_create.c:1285:initiate_domain_create", domid,
                                   "cannot make domain: -6"))
        clash = next((d for d in live if d.uuid == uuid), None)
        if clash is not None:
            raise Fail(failure_rc, f"xl (test stand-in): a domain with uuid {uuid} is running "
                                   f"already ({clash.name}, domid {clash.domid})")
        domid = env.alloc_domid()
        dom = Dom(env=env, uuid=uuid, domid=domid, config=config)
        dom.dir.mkdir(parents=True, exist_ok=True)
        (dom.dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (dom.dir / "domid").write_text(f"{domid}\n")
        dom.set_state(f"creating {os.getpid()}")
    try:
        start_qemu(dom, paused=paused, incoming=restore_fd is not None)
        if restore_fd is not None:
            restore_memory(dom, restore_fd)
        if not paused:
            with dom.control() as q:
                q.execute("cont")
        dom.set_state("paused" if paused else "running")
    except Fail as exc:
        kill(dom)
        raise Fail(failure_rc, *exc.lines) from None
    except BaseException:
        kill(dom)
        raise
    return dom


def restore_memory(dom: Dom, fd: int) -> None:
    """Read the libxl stream after the xl header from ``fd``: check its framing and
    feed the PAGE_DATA payloads (QEMU's migration stream) to QEMU's incoming
    migration over a socketpair, while a thread parses on; a corrupt or truncated
    stream fails the restore with libxl's/libxc's messages."""
    reader = StreamReader(fd, dom.domid)
    try:
        gtype, major, minor = reader.head()
    except StreamError as exc:
        raise Fail(1, *exc.lines) from None
    err(f"xc: info: Found x86 {'PV' if gtype == DHDR_X86_PV else 'HVM'} domain from Xen "
        f"{major}.{minor}", "xc: info: Restoring domain")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    problems: list[BaseException] = []
    qemu_gone = threading.Event()

    def sink(data: bytes) -> None:
        if qemu_gone.is_set():
            return  # QEMU read its whole stream (or failed): keep checking the framing
        try:
            ours.sendall(data, socket.MSG_NOSIGNAL)
        except OSError:
            qemu_gone.set()

    def feed() -> None:
        try:
            reader.libxc_records(sink)
            reader.tail()
        except (StreamError, OSError) as exc:
            problems.append(exc)
        finally:
            with contextlib.suppress(OSError):
                ours.shutdown(socket.SHUT_WR)

    feeder = threading.Thread(target=feed, name="xl-standin-restore", daemon=True)
    try:
        try:
            with dom.control(timeout=600) as q:
                q.send_fd(MEM_FD, theirs.fileno())
                theirs.close()
                q.execute("migrate-incoming", {"uri": f"fd:{MEM_FD}"})
                feeder.start()
                st = q.poll("query-status", lambda r: r.get("status") != "inmigrate",
                            timeout=3600, interval=0.005)
                mig = q.execute("query-migrate")
        except QMPFailure as exc:
            qemu_gone.set()
            if feeder.is_alive() or feeder.ident is not None:
                feeder.join(60)
            _stream_problem(problems)
            raise Fail(1, f"xc: error: Restore failed ({exc}): Internal error",
                       libxl_error("libxl_stream_read.c:852:libxl__xc_domain_restore_done",
                                   dom.domid, "restoring domain: Invalid argument")) from None
        qemu_gone.set()
        feeder.join(600)
        _stream_problem(problems)
    finally:
        theirs.close()
        ours.close()
    if st.get("status") not in ("paused", "postmigrate", "prelaunch") or \
            mig.get("status") not in (None, "completed"):
        raise Fail(1, f"xc: error: Restore failed ({st.get('status')}, migration "
                      f"{mig.get('status')}: {mig.get('error-desc', '')}): Internal error",
                   libxl_error("libxl_stream_read.c:852:libxl__xc_domain_restore_done",
                               dom.domid, "restoring domain: Invalid argument"))


def _stream_problem(problems: list[BaseException]) -> None:
    for exc in problems:
        if isinstance(exc, StreamError):
            raise Fail(1, *exc.lines)
        raise Fail(1, f"xc: error: Restore failed ({exc}): Internal error")
