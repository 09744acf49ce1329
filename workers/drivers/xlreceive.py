"""The receiver of a live memory snapshot on Xen: xl's migration transport, run by xl.

``xl migrate -s RUNE DOMID HOST`` runs ``sh -c "exec RUNE HOST xl migrate-receive"`` with
the child's stdin carrying the migration stream and its stdout the reply channel
(``tools/xl/xl_migrate.c``). RUNE is ``python -m workers.drivers.xlreceive REQUEST``
(:func:`rune`); the words xl appends are ignored. REQUEST is a 0600 JSON file the
worker wrote (:class:`Request`).

What it does, in order (each step timestamped in the report):

1. writes xl's banner (``tools/xl/xl.h``: the sender reads it before sending);
2. reads the stream with a timeout on every read (poll), feeds it to the framing
   parser (:mod:`workers.drivers.xlstream`: bounds on every length, the byte budget)
   and writes it to the memory file, created 0600 in a 0700 directory;
3. at the libxl END record (the guest is suspended now, its device model still
   answers QMP) fsyncs the file and runs the disk ``transaction`` the worker computed,
   through :mod:`workers.block.qmpblock` like every other strategy;
4. writes its report atomically, then closes the reply channel **without** sending
   xl's "domain received, ready to unpause": xl logs "Migration failed, resuming at
   sender.", resumes the guest where it was and exits 1.

On any failure (framing, budget, timeout, EOF, QMP) it removes the memory file,
reports why and closes the channel: the sender resumes the guest. It never writes the
"ready" message, so the sender never destroys the domain.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import stat
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.drivers.xlstream import StreamError, StreamParser

BANNER = b"xl migration receiver ready, send binary domain data.\n"  # tools/xl/xl.h
READY = b"domain received, ready to unpause"  # what this module must never send
CHUNK = 1 << 20
FAULT_ENV = "DOMSNAP_FAULT"  # ``xl-receive-<point>``: the receiver kills itself there


@dataclass(frozen=True)
class Request:
    """What the worker asks of one receiver (JSON, 0600)."""

    memory_file: str
    qmp_socket: str
    actions: list[dict[str, Any]]  # the one QMP transaction, computed by the worker
    budget: int  # bytes the stream may take
    read_timeout: float  # seconds any one read may wait
    report: str
    qmp_timeout: float = 30.0

    @classmethod
    def load(cls, path: Path) -> Request:
        st = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.getuid():
            raise ReceiveError(f"request {path} must be a regular 0600 file of uid "
                               f"{os.getuid()} (mode {oct(st.st_mode)}, uid {st.st_uid})")
        body = json.loads(path.read_text())
        return cls(**{k: body[k] for k in cls.__dataclass_fields__ if k in body})


@dataclass
class Report:
    """The receiver's account, read by the worker (xl's exit code is 1 either way)."""

    ok: bool = False
    error: str = ""
    phase: str = "start"  # where it stopped: start, stream, fsync, transaction, done
    end_received: bool = False
    fsynced: bool = False
    transaction_done: bool = False
    bytes: int = 0
    page_data_records: int = 0
    pages: int = 0
    rounds: int = 0
    records: dict[str, int] = field(default_factory=dict)
    # wall-clock times (time.time()): the worker compares them with its own
    times: dict[str, float] = field(default_factory=dict)
    round_starts: list[float] = field(default_factory=list)  # first PAGE_DATA of each round
    round_ends: list[float] = field(default_factory=list)  # last PAGE_DATA of each round
    transaction_ms: float | None = None
    pid: int = 0


class ReceiveError(Exception):
    """Why a receive failed, as the report says it."""


def rune(request: Path) -> str:
    """The shell string for ``xl migrate -s``: fixed words and quoted paths only."""
    return shlex.join([sys.executable, "-m", "workers.drivers.xlreceive", str(request)])


def _fault(name: str) -> None:
    """Test hook: ``DOMSNAP_FAULT=xl-receive-<name>`` kills this process (only this one:
    xl, in the same process group, must live on to resume the guest);
    ``xl-receive-<name>:hold`` stops here until ``$DOMSNAP_STATE_DIR/release-xl-receive-
    <name>`` exists (at most 10 minutes), as :func:`workers.hostio.faults.point` does."""
    armed = os.environ.get(FAULT_ENV)
    if armed == f"xl-receive-{name}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif armed == f"xl-receive-{name}:hold":
        flag = Path(os.environ.get("DOMSNAP_STATE_DIR", ".")) / f"release-xl-receive-{name}"
        deadline = time.monotonic() + 600
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Receiver:
    def __init__(self, req: Request, *, stdin: int = 0, stdout: int = 1) -> None:
        self.req = req
        self.stdin = stdin
        self.stdout = stdout
        self.report = Report(pid=os.getpid())
        self.parser = StreamParser(limit=req.budget)

    def _mark(self, what: str) -> None:
        self.report.times[what] = time.time()

    def run(self) -> Report:
        self._mark("started")
        mem = Path(self.req.memory_file)
        created = False
        try:
            _write_all(self.stdout, BANNER)
            self._mark("banner")
            mem.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(mem, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            created = True
            try:
                self.report.phase = "stream"
                self._stream(fd)
                self.report.phase = "fsync"
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(mem.parent)
            self.report.fsynced = True
            self._mark("fsynced")
            _fault("fsynced")
            self._sender_alive()
            self.report.phase = "transaction"
            self._transaction()
            self.report.phase = "done"
            self.report.ok = True
        except (ReceiveError, StreamError, OSError, ValueError) as exc:
            self.report.error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # QMPError, OperationTimeout, ...: reported, never raised
            self.report.error = f"{type(exc).__name__}: {exc}"
        finally:
            if not self.report.ok and created:
                mem.unlink(missing_ok=True)
            self._count()
        return self.report

    def _stream(self, fd: int) -> None:
        poller = select.poll()
        poller.register(self.stdin, select.POLLIN | select.POLLHUP | select.POLLERR)
        timeout_ms = int(self.req.read_timeout * 1000)
        rounds = 0
        while not self.parser.done:
            if not poller.poll(timeout_ms):
                raise ReceiveError(
                    f"no stream data for {self.req.read_timeout:g}s after byte "
                    f"{self.parser.counts.bytes} (expected {self._expecting()})")
            data = os.read(self.stdin, CHUNK)
            if not data:
                self.parser.finish()  # raises: the stream ended before libxl END
            if "stream" not in self.report.times:
                self._mark("stream")
            for ev in self.parser.feed(data):
                if ev.kind == "libxc-header":
                    self._mark("libxc")
                elif ev.name == "PAGE_DATA":
                    now = time.time()
                    if ev.round != rounds:
                        rounds = ev.round
                        self.report.round_starts.append(now)
                        self.report.round_ends.append(now)
                    self.report.round_ends[-1] = now
            _write_all(fd, data)
            if self.parser.counts.page_data_records:
                _fault("streaming")  # the live rounds run: the guest has not suspended
        self.report.end_received = True
        self._mark("end")

    def _sender_alive(self) -> None:
        """xl keeps its end of the stream open while it waits for the "ready" message; an
        EOF now means it died (killed after the suspend): no disk snapshot then, for
        nobody would report or undo it."""
        poller = select.poll()
        poller.register(self.stdin, select.POLLIN | select.POLLHUP)
        if poller.poll(0):
            extra = os.read(self.stdin, 64)
            raise ReceiveError("the sender closed the stream after its end: xl is gone, no "
                               "disk snapshot taken" if not extra else
                               f"{len(extra)}+ byte(s) after the end of the stream")

    def _expecting(self) -> str:
        try:
            self.parser.finish()
        except StreamError as exc:
            return exc.problem.split("expected ", 1)[-1]
        return "nothing"

    def _transaction(self) -> None:
        # imported here: the receiver's stream phase needs none of the block layer
        from workers.block import qmpblock
        from workers.block.qmp import QMPClient

        if self.req.actions:
            with QMPClient(self.req.qmp_socket, timeout=self.req.qmp_timeout) as q:
                self.report.transaction_ms = qmpblock.transaction(q, self.req.actions)
        self.report.transaction_done = True
        self._mark("transaction")

    def _count(self) -> None:
        c = self.parser.counts
        self.report.bytes = c.bytes
        self.report.page_data_records = c.page_data_records
        self.report.pages = c.pages
        self.report.rounds = c.rounds
        self.report.records = dict(c.records)

    def close_channel(self) -> None:
        """The end of the reply channel (and of the stream): the sender resumes the guest."""
        for fd in (self.stdout, self.stdin):
            try:
                os.close(fd)
            except OSError:
                pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_report(path: Path, report: Report) -> None:
    from workers.hostio.fsutil import atomic_write

    atomic_write(path, json.dumps(asdict(report), sort_keys=True))


def read_report(path: Path) -> Report | None:
    """The receiver's report, or None if it wrote none (killed before the end)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Report(**{k: body[k] for k in Report.__dataclass_fields__ if k in body})


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: python -m workers.drivers.xlreceive REQUEST [ignored...]\n")
        return 2
    try:
        req = Request.load(Path(argv[0]))
    except (OSError, ValueError, TypeError, KeyError, ReceiveError) as exc:
        sys.stderr.write(f"xlreceive: bad request {argv[0]}: {exc}\n")
        return 2  # the channel closes as the process exits: the sender resumes
    receiver = Receiver(req)
    report = receiver.run()
    _fault("reported" if report.ok else "failed")
    # xl waits for this process to exit before it resumes the guest
    # (migration_child_report): report, close, exit, nothing more
    report.times["closed"] = time.time()
    write_report(Path(req.report), report)
    receiver.close_channel()
    if not report.ok:
        sys.stderr.write(f"xlreceive: {report.error}\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main(sys.argv[1:]))
