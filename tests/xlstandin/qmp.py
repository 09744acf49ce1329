"""A tiny synchronous QMP client for the stand-in (stdlib only).

The stand-in talks only to its private control monitor (``standin-ctl-<domid>``),
never to the device model's ``qmp-libxl-<domid>``: that one belongs to the code
under test. A QMP socket serves one client at a time; a second client is accepted
but gets no greeting until the first disconnects, so the greeting has its own
(short, configurable) timeout.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any


class QMPFailure(Exception):
    """QEMU answered with an error, or the connection failed."""

    def __init__(self, message: str, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


class MonitorBusy(QMPFailure):
    """No greeting in time: another client holds the monitor."""


class QMP:
    def __init__(self, path: str, *, timeout: float = 30.0, greeting_timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.greeting_timeout = greeting_timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._id = 0

    def __enter__(self) -> QMP:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.greeting_timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise QMPFailure(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        self._sock = sock
        try:
            greeting = self._read(time.monotonic() + self.greeting_timeout)
        except TimeoutError:
            self.close()
            raise MonitorBusy(f"no QMP greeting on {self.path} (monitor busy)") from None
        except BaseException:
            self.close()
            raise
        if "QMP" not in greeting:
            self.close()
            raise QMPFailure(f"no QMP greeting on {self.path}: {greeting!r}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf = b""
        if sock is not None:
            sock.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise
            except OSError as exc:
                raise QMPFailure(f"QMP connection {self.path} lost: {exc}") from None
            if not chunk:
                raise QMPFailure(f"QMP connection {self.path} closed by QEMU")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise QMPFailure(f"unexpected QMP message {msg!r}")
        return msg

    def _send(self, command: str, arguments: dict[str, Any] | None,
              fds: list[int] | None = None) -> str:
        assert self._sock is not None, "not connected"
        self._id += 1
        ident = f"xl-standin-{self._id}"
        msg: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            msg["arguments"] = arguments
        data = json.dumps(msg).encode() + b"\n"
        self._sock.settimeout(self.timeout)
        # MSG_NOSIGNAL: a QEMU that exited (a failed incoming migration ends the process)
        # is a QMPFailure, not a SIGPIPE that kills xl (xl's own SIGPIPE deaths are on its
        # stdout/stderr)
        try:
            if fds:
                sent = socket.send_fds(self._sock, [data], fds, socket.MSG_NOSIGNAL)
                if sent < len(data):
                    self._sock.sendall(data[sent:], socket.MSG_NOSIGNAL)
            else:
                self._sock.sendall(data, socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise QMPFailure(f"cannot send {command} to {self.path}: {exc}") from None
        return ident

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                fds: list[int] | None = None, timeout: float | None = None) -> Any:
        ident = self._send(command, arguments, fds)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                msg = self._read(deadline)
            except TimeoutError:
                raise QMPFailure(f"no reply to {command} from {self.path}") from None
            if "event" in msg or msg.get("id") not in (ident, None):
                continue
            if "error" in msg:
                err = msg["error"]
                raise QMPFailure(str(err.get("desc", err)), err.get("class"))
            return msg.get("return")

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event QEMU sends, or None if none came within ``timeout``; raises
        QMPFailure once QEMU has closed the connection (it exited)."""
        try:
            while True:
                msg = self._read(time.monotonic() + timeout)
                if "event" in msg:
                    return msg
        except TimeoutError:
            return None

    def send_fd(self, name: str, fd: int) -> None:
        self.execute("getfd", {"fdname": name}, fds=[fd])

    def poll(self, command: str, until: Callable[[Any], bool], *, timeout: float,
             interval: float = 0.01) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.execute(command)
            if until(value):
                return value
            if time.monotonic() > deadline:
                raise QMPFailure(f"{command} did not reach the awaited state: {value!r}")
            time.sleep(interval)
