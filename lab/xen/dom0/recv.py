"""A capture receiver for ``xl migrate -s CMD DOMID HOST`` (issue 8's method), run in the
lab's dom0 with the system Python and nothing but the standard library (``python3 -S``:
a Python start costs seconds under nested emulation, site imports more).

xl runs ``sh -c "exec CMD HOST xl [-t] [-vvv] migrate-receive"``: this program's stdin
is the stream, its stdout the reply channel. It writes the 54-byte receiver banner,
copies stdin to ``--out`` while following the record framing only (xl header + JSON
config, the libxl v2 stream, inside its LIBXC_CONTEXT the libxc stream) until the libxl
END record, fsyncs the file, optionally runs a command in the window (``--during``:
e.g. ``xl list``, while the guest is still suspended), then closes stdout WITHOUT
sending "domain received, ready to unpause": the sender logs the truncated ready
message, resumes the guest and exits 1. A JSON report (timestamps, the per-record
summary, the argv xl gave) goes to ``--log``.

Fault modes for the captures: ``--mode badbanner`` writes a banner of the right length
with the wrong text; ``--mode die-after=N`` SIGKILLs itself after N bytes of stream.

``summarize(path)`` is the same framing walk over a finished file (a captured stream or
an ``xl save`` file: the same layout), used by capture.py for the fixtures.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO

BANNER = b"xl migration receiver ready, send binary domain data.\n"
BAD_BANNER = b"xl migration receiver NOT ready, do not send anything.\n"[: len(BANNER)]
XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
LIBXL_IDENT = b"LibxlFmt"
MAX_BODY = 64 << 20          # no record of either layer is near this: a bound, not a guess
READ_TIMEOUT_S = 600.0

LIBXL_TYPES = {0: "END", 1: "LIBXC_CONTEXT", 2: "EMULATOR_XENSTORE_DATA",
               3: "EMULATOR_CONTEXT", 4: "CHECKPOINT_END", 5: "CHECKPOINT_STATE"}
LIBXC_TYPES = {0: "END", 1: "PAGE_DATA", 2: "X86_PV_INFO", 3: "X86_PV_P2M_FRAMES",
               4: "X86_PV_VCPU_BASIC", 5: "X86_PV_VCPU_EXTENDED", 6: "X86_PV_VCPU_XSAVE",
               7: "SHARED_INFO", 8: "X86_TSC_INFO", 9: "HVM_CONTEXT", 10: "HVM_PARAMS",
               11: "TOOLSTACK", 12: "X86_PV_VCPU_MSRS", 13: "VERIFY", 14: "CHECKPOINT",
               15: "CHECKPOINT_DIRTY_PFN_LIST", 16: "STATIC_DATA_END",
               17: "X86_CPUID_POLICY", 18: "X86_MSR_POLICY"}


class StreamError(Exception):
    pass


class Source:
    """Exact reads from a file descriptor with a timeout per read, teeing every byte to
    ``sink`` and counting the offset; ``die_after`` kills the process after that many
    bytes (the mid-stream fault)."""

    def __init__(self, fd: int, sink: BinaryIO | None, die_after: int | None = None) -> None:
        self.fd = fd
        self.sink = sink
        self.offset = 0
        self.die_after = die_after
        self.first_byte_at: float | None = None

    def _chunk(self, n: int) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT_S)
        if not ready:
            raise StreamError(f"no data for {READ_TIMEOUT_S:.0f} s at offset {self.offset}")
        data = os.read(self.fd, min(n, 1 << 20))
        if not data:
            raise StreamError(f"stream ended at offset {self.offset}, {n} more bytes expected")
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        if self.sink is not None:
            self.sink.write(data)
        self.offset += len(data)
        if self.die_after is not None and self.offset >= self.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return data

    def read(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            data = self._chunk(left)
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    def skip(self, n: int) -> None:
        left = n
        while left:
            left -= len(self._chunk(left))


class FileSource(Source):
    """The same reads from a finished file (for summarize)."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__(-1, None)
        self.fh = fh

    def _chunk(self, n: int) -> bytes:
        data = self.fh.read(min(n, 1 << 20))
        if not data:
            raise StreamError(f"file ended at offset {self.offset}, {n} more bytes expected")
        self.offset += len(data)
        return data


def _record(src: Source, layer: str, names: dict[int, str],
            records: list[dict[str, Any]]) -> tuple[int, int]:
    at = src.offset
    rtype, length = struct.unpack("<II", src.read(8))
    if length > MAX_BODY:
        raise StreamError(f"{layer} record type {rtype:#x} at offset {at} claims {length} bytes")
    padded = (length + 7) & ~7
    body_head = src.read(min(padded, 8)) if padded else b""
    src.skip(padded - len(body_head))
    rec: dict[str, Any] = {"offset": at, "layer": layer, "type": rtype,
                           "name": names.get(rtype & 0x7FFFFFFF, f"UNKNOWN_{rtype:#x}"),
                           "length": length, "t": round(time.time(), 4)}
    if layer == "libxc" and rtype == 1 and len(body_head) >= 4:
        rec["pages"] = struct.unpack("<I", body_head[:4])[0]
    records.append(rec)
    return rtype, length


def walk(src: Source) -> dict[str, Any]:
    """Follow the framing to the libxl END; returns the headers' facts and the records."""
    out: dict[str, Any] = {"records": []}
    hdr = src.read(48)
    if hdr[:32] != XL_MAGIC:
        raise StreamError(f"not an xl stream: first bytes {hdr[:32]!r}")
    byteorder, mflags, oflags, optlen = struct.unpack("<IIII", hdr[32:48])
    if optlen > MAX_BODY:
        raise StreamError(f"xl header claims {optlen} bytes of optional data")
    opt = src.read(optlen)
    cfg_len = struct.unpack("<I", opt[:4])[0] if optlen >= 4 else 0
    out["xl_header"] = {"byteorder": f"{byteorder:#010x}", "mandatory_flags": mflags,
                        "optional_flags": oflags, "optional_data_len": optlen,
                        "config_len": cfg_len, "config_end": 48 + optlen}
    out["config"] = opt[4:4 + cfg_len].rstrip(b"\0").decode(errors="replace")
    lx = src.read(16)
    ident, version, options = struct.unpack(">8sII", lx)
    if ident != LIBXL_IDENT:
        raise StreamError(f"no LibxlFmt header at offset {src.offset - 16}: {lx!r}")
    out["libxl_header"] = {"offset": src.offset - 16, "version": version, "options": options}
    records: list[dict[str, Any]] = out["records"]
    while True:
        rtype, _ = _record(src, "libxl", LIBXL_TYPES, records)
        if rtype == 0:
            out["libxl_end_at"] = time.time()
            break
        if rtype != 1:
            continue
        # LIBXC_CONTEXT: the libxc stream follows, image header (big-endian) + domain header
        at = src.offset
        marker, ident_xc, version_xc, opts, _r1, _r2 = struct.unpack(">QIIHHI", src.read(24))
        if marker != 0xFFFFFFFFFFFFFFFF or ident_xc != 0x58454E46:
            raise StreamError(f"no libxc image header at offset {at}")
        dtype, page_shift, _res, xmaj, xmin = struct.unpack("<IHHII", src.read(16))
        out["libxc_header"] = {"offset": at, "version": version_xc, "options": opts,
                               "domain_type": dtype, "page_shift": page_shift,
                               "xen": f"{xmaj}.{xmin}"}
        while True:
            xtype, _ = _record(src, "libxc", LIBXC_TYPES, records)
            if xtype == 0:
                out["libxc_end_at"] = time.time()
                break
    out["bytes"] = src.offset
    return out


def summarize(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        res = walk(FileSource(fh))
        res["trailing_bytes"] = len(fh.read())
    return res


def summary_text(res: dict[str, Any]) -> str:
    """One line per record: offset, layer, type number and name, body length (pages)."""
    lines = [f"# xl header: {json.dumps(res['xl_header'])}",
             f"# libxl header: {json.dumps(res['libxl_header'])}",
             f"# libxc header: {json.dumps(res.get('libxc_header'))}",
             f"# total bytes {res['bytes']}, trailing bytes {res.get('trailing_bytes', 0)}",
             "# offset layer type name length [pages]"]
    for r in res["records"]:
        extra = f" pages={r['pages']}" if "pages" in r else ""
        lines.append(f"{r['offset']:>12} {r['layer']:<5} {r['type']:#010x} {r['name']:<26} "
                     f"{r['length']}{extra}")
    counts: dict[str, int] = {}
    for r in res["records"]:
        key = f"{r['layer']}.{r['name']}"
        counts[key] = counts.get(key, 0) + 1
    lines.append("# counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    rest: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--":
            rest = list(it)
            break
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        else:
            rest = [a, *it]
            break
    log: dict[str, Any] = {"argv_from_xl": rest, "opts": opts, "started_at": time.time(),
                           "pid": os.getpid()}
    mode = opts.get("mode", "normal")
    die_after = int(mode.split("=", 1)[1]) if mode.startswith("die-after=") else None
    log_path = opts.get("log")

    def write_log() -> None:
        if log_path:
            with open(log_path + ".tmp", "w") as fh:
                json.dump(log, fh, indent=1)
            os.replace(log_path + ".tmp", log_path)

    try:
        os.write(1, BAD_BANNER if mode == "badbanner" else BANNER)
        log["banner_at"] = time.time()
        if mode == "badbanner":
            # what does xl do now: read whatever comes until EOF, then report it
            src = Source(0, None)
            try:
                while True:
                    src._chunk(1 << 20)
            except StreamError as exc:
                log["after_bad_banner"] = f"{src.offset} bytes, then {exc}"
            return 0
        fd = os.open(opts["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb", buffering=1 << 20) as sink:
            src = Source(0, sink, die_after)
            res = walk(src)
            sink.flush()
            os.fsync(sink.fileno())
        log["fsynced_at"] = time.time()
        log["first_byte_at"] = src.first_byte_at
        log.update({k: res[k] for k in ("xl_header", "libxl_header", "libxc_header",
                                        "bytes", "libxl_end_at", "libxc_end_at")})
        log["records"] = res["records"]
        if opts.get("during"):
            p = subprocess.run(opts["during"].split(), capture_output=True, text=True,
                               timeout=120, check=False)
            log["during"] = {"cmd": opts["during"], "rc": p.returncode, "stdout": p.stdout,
                             "stderr": p.stderr, "at": time.time()}
        if opts.get("hold"):
            time.sleep(float(opts["hold"]))
        os.close(1)  # the reply channel: closed with no "ready" message, ever
        log["closed_at"] = time.time()
        log["ok"] = True
        return 0
    except Exception as exc:  # noqa: BLE001 - the report says what happened
        log["ok"] = False
        log["error"] = f"{type(exc).__name__}: {exc}"
        return 2
    finally:
        log["exit_at"] = time.time()
        write_log()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
