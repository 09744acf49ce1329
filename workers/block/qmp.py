"""A small synchronous QMP client over a unix socket.

One :class:`QMPClient` is one QMP session: connect (greeting, then
``qmp_capabilities``), run commands, disconnect. A QMP socket serves one client
at a time (a second client gets no greeting until the first disconnects), and on
Xen libxl talks to the same socket: connect, do the work, close at once.

Commands carry an ``id``; a reply is matched by it, so a late reply to a command
that timed out earlier is dropped instead of being taken for the next one.
Events that arrive while waiting are queued in :attr:`QMPClient.events` (dicts
with "event", "data" (``{}`` when QEMU sends none) and "timestamp") and consumed
by :meth:`QMPClient.wait_event`.

Errors (all from :mod:`domsnap.errors`, all naming the socket path)::

    socket missing, connection refused .......... QMPError       (QEMU not running?)
    no greeting in time ......................... OperationTimeout (monitor busy?)
    EOF, broken pipe, garbage on the wire ....... QMPError       (QEMU gone)
    {"error": {"class": C, "desc": D}} .......... QMPError(D, sent=cmd, received=reply,
                                                          error_class=C)
    no reply / event / poll state in time ....... OperationTimeout

Not thread-safe: one client per thread, as QEMU allows one per socket anyway.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from domsnap.errors import OperationTimeout, QMPError

__all__ = ["QMPClient"]

log = logging.getLogger(__name__)

# Events kept while nobody waits for them; the oldest are dropped beyond this.
MAX_QUEUED_EVENTS = 10_000
_RECV_SIZE = 65536


class QMPClient:
    """A QMP session on the unix socket at ``path``; ``timeout`` is the default per wait."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 0

    # -- session ---------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        """Open the socket, read the greeting, negotiate capabilities; return the greeting."""
        if self._sock is not None:
            raise QMPError(f"QMP client for {self.path} is already connected")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise QMPError(f"QMP socket {self.path} does not exist (QEMU not running?)") from None
        except ConnectionRefusedError:
            sock.close()
            raise QMPError(
                f"QMP socket {self.path} refused the connection (QEMU not running?)"
            ) from None
        except TimeoutError:
            sock.close()
            raise OperationTimeout(
                f"connecting to QMP socket {self.path} timed out after {self.timeout:g}s"
            ) from None
        except OSError as exc:
            sock.close()
            raise QMPError(f"cannot connect to QMP socket {self.path}: {exc}") from None
        self._sock = sock
        self._buf.clear()
        try:
            greeting = self._read_greeting()
            self.greeting = greeting
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise
        log.debug("QMP %s connected: %s", self.path, greeting.get("QMP", {}).get("version"))
        return greeting

    def _read_greeting(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        try:
            msg = self._read_message(deadline, waiting_for="the greeting")
        except OperationTimeout:
            raise OperationTimeout(
                f"no QMP greeting from {self.path} within {self.timeout:g}s: the monitor may "
                "be busy with another client (a QMP socket serves one client at a time)"
            ) from None
        if "QMP" not in msg:
            raise QMPError(f"QMP socket {self.path} sent no greeting", received=msg)
        return msg

    def close(self) -> None:
        """Close the session (idempotent); queued events are kept."""
        sock, self._sock = self._sock, None
        self._buf.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def __enter__(self) -> QMPClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- commands --------------------------------------------------------------

    def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` and return its ``return`` value; QMPError on an error reply."""
        msg = self._command(command, arguments)
        self._send(msg, command)
        return self._reply(msg, timeout)

    def send_fd(self, fdname: str, fd: int) -> None:
        """Hand ``fd`` to QEMU as ``fdname`` (``getfd``, the fd riding on the same message).

        QEMU keeps its own duplicate: the caller may close ``fd`` afterwards.
        """
        msg = self._command("getfd", {"fdname": fdname})
        data = self._encode(msg)
        sock = self._require()
        try:
            sock.settimeout(self.timeout)
            sent = socket.send_fds(sock, [data], [fd])
            if sent < len(data):
                sock.sendall(data[sent:])
        except OSError as exc:
            self._lost(f"sending getfd {fdname!r}", exc, sent=msg)
        self._reply(msg, None)

    def poll(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        until: Callable[[Any], bool],
        timeout: float,
        interval: float = 0.005,
    ) -> Any:
        """Repeat ``command`` until ``until(result)``; return that result.

        OperationTimeout (naming the command and its last result) after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = self.execute(command, arguments)
            if until(value):
                return value
            now = time.monotonic()
            if now >= deadline:
                raise OperationTimeout(
                    f"QMP {command} on {self.path} did not reach the awaited state within "
                    f"{timeout:g}s; last result: {value!r}",
                    command=command,
                    last=value,
                )
            time.sleep(min(interval, deadline - now))

    # -- events ----------------------------------------------------------------

    def wait_event(
        self,
        name: str,
        *,
        timeout: float,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Return (and dequeue) the first event ``name`` that ``match`` accepts.

        Queued events are searched first, then the socket is read; other events
        read meanwhile are queued. OperationTimeout after ``timeout``.
        """

        def wanted(ev: dict[str, Any]) -> bool:
            return ev.get("event") == name and (match is None or match(ev))

        for i, ev in enumerate(self.events):
            if wanted(ev):
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self._read_message(deadline, waiting_for=f"event {name}")
            except OperationTimeout:
                raise OperationTimeout(
                    f"no QMP event {name} on {self.path} within {timeout:g}s",
                    event=name,
                ) from None
            if "event" not in msg:
                log.debug("QMP %s: dropping unexpected reply %s", self.path, msg)
                continue
            msg.setdefault("data", {})
            if wanted(msg):
                return msg
            self._queue(msg)

    # -- wire ------------------------------------------------------------------

    def _command(self, command: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"execute": command, "id": f"domsnap-{self._next_id}"}
        if arguments:
            msg["arguments"] = dict(arguments)
        return msg

    @staticmethod
    def _encode(msg: Mapping[str, Any]) -> bytes:
        return json.dumps(msg, separators=(",", ":")).encode() + b"\n"

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise QMPError(f"QMP client for {self.path} is not connected")
        return self._sock

    def _send(self, msg: dict[str, Any], what: str) -> None:
        sock = self._require()
        log.debug("QMP %s >>> %s", self.path, msg)
        try:
            sock.settimeout(self.timeout)
            sock.sendall(self._encode(msg))
        except OSError as exc:
            self._lost(f"sending {what}", exc, sent=msg)

    def _reply(self, msg: dict[str, Any], timeout: float | None) -> Any:
        """Read until the reply to ``msg`` (by id), queueing events; unwrap it."""
        command = msg["execute"]
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                reply = self._read_message(
                    deadline, waiting_for=f"the reply to {command}", sent=msg
                )
            except OperationTimeout:
                raise OperationTimeout(
                    f"no reply to QMP {command} from {self.path} within {limit:g}s",
                    command=command,
                ) from None
            if "event" in reply:
                self._queue(reply)
                continue
            # QEMU echoes our id; only a command it could not parse comes back without.
            if "id" in reply and reply["id"] != msg["id"]:
                log.debug("QMP %s: dropping stale reply %s", self.path, reply)
                continue
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise QMPError(
                    str(err.get("desc", f"QMP {command} failed")),
                    sent=msg,
                    received=reply,
                    error_class=err.get("class"),
                )
            if "return" in reply:
                return reply["return"]
            raise QMPError(
                f"unexpected QMP message from {self.path} in reply to {command}",
                sent=msg,
                received=reply,
            )

    def _queue(self, event: dict[str, Any]) -> None:
        event.setdefault("data", {})  # STOP, RESUME, ... come without: same shape for all
        self.events.append(event)
        if len(self.events) > MAX_QUEUED_EVENTS:
            del self.events[: len(self.events) - MAX_QUEUED_EVENTS]

    def _read_message(
        self, deadline: float, *, waiting_for: str, sent: Any = None
    ) -> dict[str, Any]:
        """Read one JSON message (one line); OperationTimeout at ``deadline``."""
        sock = self._require()
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    self.close()
                    raise QMPError(
                        f"invalid JSON from QMP socket {self.path}: {line[:200]!r}", sent=sent
                    ) from None
                if not isinstance(msg, dict):
                    self.close()
                    raise QMPError(f"unexpected QMP message from {self.path}", received=msg)
                log.debug("QMP %s <<< %s", self.path, msg)
                return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationTimeout(f"timed out waiting for {waiting_for} on {self.path}")
            try:
                sock.settimeout(remaining)
                chunk = sock.recv(_RECV_SIZE)
            except TimeoutError:
                continue  # the deadline check above raises
            except OSError as exc:
                self._lost(f"waiting for {waiting_for}", exc, sent=sent)
            if not chunk:
                self.close()
                raise QMPError(
                    f"QMP connection to {self.path} closed by QEMU (EOF) while waiting for "
                    f"{waiting_for}",
                    sent=sent,
                )
            self._buf += chunk

    def _lost(self, doing: str, exc: OSError, *, sent: Any = None) -> NoReturn:
        """The connection broke: close it and raise QMPError (never returns)."""
        self.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise QMPError(
            f"QMP connection to {self.path} lost while {doing}: {reason}", sent=sent
        ) from exc
