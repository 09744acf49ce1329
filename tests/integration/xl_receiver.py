"""A small migration receiver for the stand-in's ``xl migrate -s`` tests (not domsnap's).

Run as the transport command: ``python3 xl_receiver.py CONTROL_JSON HOST xl migrate-receive``
(xl appends HOST and the rest). It writes xl's banner, captures the stream to a file
while parsing its framing (records and the time each arrived), and at libxl's END
runs one QMP transaction on the domain's device-model socket, then waits for the
test's go-ahead before it closes its reply channel (or sends "ready"). What it saw
goes into a JSON report. Its modes, from the control file: ``delay`` (seconds slept
per 64 KiB read: a slow receiver makes the live rounds last), ``die_after`` (bytes
after which it SIGKILLs itself), ``banner`` (what to send instead of xl's banner),
``ready`` (send "domain received, ready to unpause" and answer xl's handshake with
the given status byte).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

BANNER = b"xl migration receiver ready, send binary domain data.\n"


class Capture:
    def __init__(self, control: dict[str, Any]) -> None:
        self.control = control
        self.out = open(control["capture"], "wb")  # noqa: SIM115 - closed in main
        self.got = 0
        self.records: list[tuple[str, int, float]] = []

    def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(0, min(size - len(data), 65536))
            if not chunk:
                raise EOFError(f"stream ended after {self.got} bytes")
            data += chunk
            self.got += len(chunk)
            self.out.write(chunk)
            if self.control.get("die_after") and self.got >= self.control["die_after"]:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.control.get("delay"):
                time.sleep(self.control["delay"])
        return data

    def record(self, layer: str) -> tuple[int, int]:
        rtype, length = struct.unpack("<II", self.read(8))
        self.read(length + (-length % 8))
        self.records.append((layer, rtype, time.time()))
        return rtype, length


def qmp(path: str, commands: list[dict[str, Any]]) -> list[Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    f = sock.makefile("rwb")
    replies = []
    json.loads(f.readline())
    for cmd in [{"execute": "qmp_capabilities"}, *commands]:
        f.write(json.dumps(cmd).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "event" not in msg:
                break
        replies.append(msg)
    sock.close()
    return replies[1:]


def main() -> int:
    control = json.loads(Path(sys.argv[1]).read_text())
    report: dict[str, Any] = {"argv": sys.argv[2:], "started": time.time()}
    report_path = Path(control["report"])
    os.write(1, control.get("banner", BANNER.decode()).encode())
    cap = Capture(control)
    try:
        head = cap.read(48)
        (optlen,) = struct.unpack("<I", head[44:48])
        cap.read(optlen)
        cap.read(16)  # libxl header
        while cap.record("libxl")[0] != 1:  # up to LIBXC_CONTEXT
            pass
        cap.read(40)  # libxc image (24 bytes) and domain (16 bytes) headers
        while cap.record("libxc")[0] != 0:
            pass
        while cap.record("libxl")[0] != 0:
            pass
    except EOFError as exc:
        report["eof"] = str(exc)
    finally:
        cap.out.flush()
        os.fsync(cap.out.fileno())
        cap.out.close()
    report["records"] = cap.records
    report["bytes"] = cap.got
    report["end"] = time.time()
    if "eof" not in report and control.get("qmp"):
        report["qmp"] = qmp(control["qmp"], [
            {"execute": "query-status"},
            {"execute": "transaction", "arguments": {"actions": [
                {"type": "blockdev-snapshot-internal-sync",
                 "data": {"device": "xvda-qcow2", "name": control["snapshot"]}}]}},
            {"execute": "query-status"}])
    report_path.write_text(json.dumps(report))
    if "eof" in report:
        return 1
    Path(control["at_end"]).touch()
    deadline = time.monotonic() + 120
    while not Path(control["go"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    if "ready" in control:
        os.write(1, b"domain received, ready to unpause\0")
        go = os.read(0, 44)
        report["go"] = go.decode(errors="replace")
        os.write(1, b"my copy unpause results are as follows\0"
                 + struct.pack("b", control["ready"]))
        if control["ready"]:
            os.write(1, b"domain is yours, you are cleared to unpause\0")
        report_path.write_text(json.dumps(report))
    os.close(1)  # the reply channel: xl resumes the guest at its end
    return 0


if __name__ == "__main__":
    sys.exit(main())
