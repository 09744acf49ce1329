"""``xl save`` and ``xl restore``: xl's save-file header, then libxl's stream.

File layout (as xl writes it): 32-byte magic, u32 byte order 0x01020304, u32
mandatory flags (1 = config is JSON, 2 = stream v2), u32 optional flags, u32
optional data length; optional data = u32 config length + the config (libxl JSON,
yajl's final newline and a NUL); then the libxl migration stream v2 with the libxc
records, whose PAGE_DATA records carry QEMU's migration stream (tests/xlstandin/
stream.py). ``xl migrate`` (migrate.py) sends the same bytes, so a captured migration
stream restores like a save file.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import time
from typing import Any

from tests.xlstandin.cli import (
    MEM_FD,
    err,
    find_domain,
    help_text,
    make_domain,
    opts,
    out,
    read_cfg,
    xl_config,
)
from tests.xlstandin.domains import Dom, Env, Fail, kill, libxl_error, wait_finalized
from tests.xlstandin.monitor import SUSPEND_SEEN, spawn_monitor
from tests.xlstandin.qmp import QMPFailure
from tests.xlstandin.stream import Layout, StreamWriter, start_pump
from tests.xlstandin.xlcfg import INVALID_DOMID, libxl_json, summary

SAVE_MAGIC = b"Xen saved domain, xl format\n \0 \r"
BYTEORDER = 0x01020304
FLAG_JSON, FLAG_STREAMV2 = 1, 2
HEADER = struct.Struct("<32sIIII")


# --------------------------------------------------------------------------- save

def cmd_save(env: Env, args: list[str]) -> int:
    found, rest = opts(args, "save", "cp", [], 2)
    if len(rest) > 3:
        out(help_text("save"))
        return 1
    flags = {o for o, _ in found}
    target = find_domain(env, rest[0])
    if isinstance(target, int):
        raise Fail(1, "unable to retrieve domain configuration")
    dom, filename = target, rest[1]
    config = read_cfg(rest[2], what="override", rc=1) if len(rest) > 2 else dom.config
    optdata = save_optdata(config)
    try:
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError:
        raise Fail(1, f"Failed to open temp file {filename} for writing") from None
    try:
        os.write(fd, HEADER.pack(SAVE_MAGIC, BYTEORDER, FLAG_JSON | FLAG_STREAMV2, 0,
                                 len(optdata)) + optdata)
        err(f"Saving to {filename} new xl format (info 0x3/0x0/{len(optdata)})",
            f"xc: info: Saving domain {dom.domid}, type x86 {'PV' if dom.type == 'pv' else 'HVM'}")
        writer = StreamWriter(fd, layout(dom))
        writer.head()  # libxc writes its headers and static data before the suspend
        suspend(dom)
        (dom.dir / SUSPEND_SEEN).touch()  # the domain's monitor sees the suspend and exits
        suspended = dom.dir / SUSPENDED
        suspended.touch()  # xl list: "---ss-" until resumed, for good if this process dies
        try:
            write_memory(dom, writer)
            writer.tail()
        except Fail:
            suspended.unlink(missing_ok=True)  # "Failed to save domain, resuming domain"
            raise
        os.fsync(fd)
    finally:
        os.close(fd)
    (dom.dir / SUSPENDED).unlink(missing_ok=True)  # libxl resumes (-c, -p) or destroys it
    _saved_log(env, dom, filename)
    if "-p" in flags or "-c" in flags:
        with dom.control() as q:
            wait_finalized(q)
            q.execute("cont")  # reactivates the block nodes the migration inactivated
            if "-p" in flags:
                q.execute("stop")
        dom.set_state("paused" if "-p" in flags else "running")
    else:
        kill(dom)
    return 0


# a domain shut down for a suspend and never resumed (flags ---ss-): what an `xl save`
# killed half-way leaves on Xen, where no xl verb resumes it (`xl unpause` does not)
SUSPENDED = "suspended"


def _saved_log(env: Env, dom: Dom, filename: str) -> None:
    """Test evidence (not in xl): every save that ran to its end, one line each."""
    (env.root / "log").mkdir(exist_ok=True)
    with open(env.root / "log" / "saves.log", "a") as fh:
        fh.write(f"{dom.uuid} {dom.domid} {os.path.abspath(filename)} completed\n")


def layout(dom: Dom) -> Layout:
    """The shape of the domain's libxc records (type, pages, vCPUs)."""
    s = summary(dom.config)
    return Layout(kind=dom.type, memory_mib=int(s["memory_mib"]), vcpus=int(s["vcpus"]))


def save_optdata(config: dict[str, Any], domid: int | None = None) -> bytes:
    """The save file's optional data: u32 length, then the config as libxl JSON with
    yajl's final newline and C's NUL (xl stores strlen + 1 bytes).

    The saved copy has no ``c_info.domid``: with it, the captured domain's header
    would say 1117 bytes, where xl 4.17 wrote 1088 (29 bytes = exactly that line).
    ``domid`` puts it back (``xl migrate -D``: save_domain_core_begin's preserve_domid).
    """
    c_info = {k: v for k, v in config["c_info"].items() if k != "domid"}
    if domid is not None:
        c_info = {**{k: c_info[k] for k in ("type", "name") if k in c_info},
                  "domid": domid, **c_info}
    blob = (libxl_json({**config, "c_info": c_info}) + "\n").encode() + b"\0"
    return struct.pack("<I", len(blob)) + blob


def guest_acks(dom: Dom, running: bool) -> bool:
    """Whether the guest answers libxl's suspend request: an HVM guest without PV
    drivers is suspended by Xen (no ack needed); a PV/PVH guest acks unless the test
    marker ``no-suspend`` exists or it is paused (``running`` false)."""
    return dom.type == "hvm" or (running and not (dom.dir / "no-suspend").exists())


def no_ack_lines(dom: Dom) -> list[str]:
    """What libxl and libxc log when a guest never acknowledged the suspend."""
    return [
        libxl_error("libxl_dom_suspend.c:262:domain_suspend_common_pvcontrol_suspending",
                    dom.domid, "guest didn't acknowledge suspend, cancelling request"),
        "xc: error: save callback suspend() failed: 0: Internal error",
        "xc: error: Save failed (0 = Success): Internal error",
        libxl_error("libxl_stream_write.c:347:libxl__xc_domain_save_done", dom.domid,
                    "saving domain: domain did not respond to suspend request: Success")]


def not_suspended_lines(dom: Dom) -> list[str]:
    """libxl_domain_resume(suspend_cancel=1) of a domain that is not suspended."""
    return [f"xc: error: Dom {dom.domid} not suspended: (shutdown 0, reason 0): Internal "
            "error", libxl_error("libxl_dom_suspend.c:661:domain_resume_done", dom.domid,
                                 "xc_domain_resume failed: Invalid argument")]


def suspend(dom: Dom) -> None:
    """libxl asks a PV/PVH guest to suspend through xenstore and waits for the ack."""
    if guest_acks(dom, dom.type == "hvm" or dom.run_state() == "running"):
        return
    time.sleep(dom.env.suspend_timeout)
    raise Fail(1, *no_ack_lines(dom), "Failed to save domain, resuming domain",
               *not_suspended_lines(dom))


def write_memory(dom: Dom, writer: StreamWriter) -> None:
    """Stop the domain and write its memory (QEMU's migration stream, in PAGE_DATA
    records) through ``writer``."""
    was_running = False
    try:
        with dom.control(timeout=600) as q:
            was_running = q.execute("query-status")["status"] == "running"
            dom.set_state("paused")
            if was_running:
                q.execute("stop")
            _slow_save(dom)
            pump = start_pump(q, writer, MEM_FD, live=False)
            info = q.poll("query-migrate",
                          lambda r: r.get("status") in ("completed", "failed", "cancelled"),
                          timeout=3600, interval=0.005)
            pump.join(600)
            if pump.error is not None:
                raise QMPFailure(f"writing the save file: {pump.error}")
            if info.get("status") != "completed":
                raise QMPFailure(str(info.get("error-desc", info.get("status"))))
    except QMPFailure as exc:
        with contextlib.suppress(QMPFailure, OSError), dom.control() as q:
            if was_running:
                wait_finalized(q)
                q.execute("cont")
        dom.set_state("running" if was_running else "paused")
        raise Fail(1, f"xc: error: Save failed ({exc}): Internal error",
                   libxl_error("libxl_stream_write.c:347:libxl__xc_domain_save_done",
                               dom.domid, "saving domain: domain responded to suspend "
                               "request: Input/output error"),
                   "Failed to save domain, resuming domain") from None


def _progress(text: str) -> None:
    """libxc's progress line on stderr, as xl save prints it while it writes memory: a
    write to a pipe whose reader died kills the process (SIGPIPE, see main)."""
    sys.stderr.write(f"xc: info: {text}\n")
    sys.stderr.flush()


def _slow_save(dom: Dom) -> None:
    """Test hook: ``<root>/domains/<uuid>/slow-save`` holding N makes the save take N
    more seconds once the guest is suspended (a big domain), writing progress lines to
    stderr meanwhile. The captured saves of a 128 MiB domU print none (two lines in
    all), so a normal save prints none here either; a long one writes while it runs, and
    with its reader gone that write kills it, as the lab saw (SIGPIPE, exit 141)."""
    try:
        seconds = float((dom.dir / "slow-save").read_text().strip() or "0")
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _progress(f"Saving memory: {int(100 * (1 - (deadline - time.monotonic()) / seconds))}%")
        time.sleep(0.1)


# --------------------------------------------------------------------------- restore

def cmd_restore(env: Env, args: list[str]) -> int:
    found, rest = opts(args, "restore", "FcpdeVA", ["vncviewer", "vncviewer-autopass"], 1)
    if len(rest) not in (1, 2):
        out(help_text("restore"))
        return 1
    paused = any(o == "-p" for o, _ in found)
    cfg_file, filename = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
    try:
        fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise Fail(1, f"Can't open restore file: {exc.strerror}") from None
    try:
        head = _read_exactly(fd, HEADER.size, filename, "header")
        magic, byteorder, mandatory, optional, optlen = HEADER.unpack(head)
        if magic != SAVE_MAGIC:
            raise Fail(1, "File has wrong magic number - corrupt or for a different tool?")
        if byteorder != BYTEORDER:
            raise Fail(1, "File has wrong byte order")
        err(f"Loading new save file {filename} (new xl fmt info "
            f"0x{mandatory:x}/0x{optional:x}/{optlen})")
        if mandatory & ~(FLAG_JSON | FLAG_STREAMV2):
            raise Fail(1, f"Savefile has mandatory flag(s) 0x{mandatory & ~3:x} which are not "
                          "supported; need newer xl")
        saved = _read_exactly(fd, optlen, filename, "optdata") if optlen else b""
        config_data = b""
        if saved:
            err(" Savefile contains xl domain config"
                + (" in JSON format" if mandatory & FLAG_JSON else ""))
            if len(saved) < 4:
                raise Fail(1, "Savefile truncated.")
            (clen,) = struct.unpack("<I", saved[:4])
            if len(saved) - 4 < clen:
                raise Fail(1, "Savefile truncated.")
            config_data = saved[4:4 + clen]
        if cfg_file is not None:
            config = read_cfg(cfg_file, what="config", rc=1)
            err(f"Parsing config from {cfg_file}")
        elif not config_data:
            raise Fail(1, "Config file not specified and none in save file")
        else:
            err("Parsing config from <saved>")
            text = config_data.rstrip(b"\0").decode("utf-8", errors="replace")
            if mandatory & FLAG_JSON:
                try:
                    config = json.loads(text)
                except ValueError:
                    raise Fail(1, "xl (test stand-in): the saved config is not valid JSON") \
                        from None
            else:
                config = xl_config(text, "<saved>")
        c_info = config.get("c_info") if isinstance(config, dict) else None
        if not isinstance(c_info, dict) or not c_info.get("name") or not c_info.get("uuid"):
            raise Fail(1, "xl (test stand-in): the domain config has no c_info name/uuid")
        if "domid" not in c_info:  # back to the shape `xl create` gives (see save_optdata)
            shaped = {k: c_info[k] for k in ("type", "name") if k in c_info}
            shaped["domid"] = INVALID_DOMID
            shaped.update((k, v) for k, v in c_info.items() if k not in shaped)
            config["c_info"] = shaped
        dom = make_domain(env, config, paused=paused, failure_rc=1, restore_fd=fd)
    finally:
        os.close(fd)
    if not any(o == "-e" for o, _ in found):
        spawn_monitor(env, dom)
    err("xc: info: Restore successful")
    if dom.type == "pv":
        err(f"xc: info: XenStore: mfn 0x{0x7ab9b - 2 * dom.domid:x}, dom 0, evt 1",
            f"xc: info: Console: mfn 0x{0x7ab9a - 2 * dom.domid:x}, dom 0, evt 2")
    return 0


def _read_exactly(fd: int, size: int, source: str, what: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise Fail(1, f"libxl: error: libxl_utils.c:440:libxl_read_exactly: "
                          f"file/stream truncated reading {what} from {source}")
        data += chunk
    return data
