"""The one subprocess runner every hypervisor and disk command goes through.

Drivers and disk backends take a :class:`Runner` as a constructor argument, so
tests swap in :class:`RecordingRunner` and assert the exact command sequence
without running anything.

Rules kept here, once, for every command:

* argv lists only, never a shell string;
* ``LC_ALL=C`` so messages (which errors quote) are stable;
* stdin is ``/dev/null`` unless ``input`` is given (nothing ever blocks on a tty);
* output is captured as text (undecodable bytes replaced, never an exception);
* each command runs in its own session; on timeout the whole process group is
  killed, so helpers it spawned die with it;
* failures become :class:`~domsnap.errors.CommandFailed`, which keeps argv, the
  exit code (``None`` when timed out, 127 when the binary is missing) and stderr;
* ``outlive=True`` (``xl save``/``restore``/``create``: a command cut off half-way
  leaves a guest suspended or half-built): the command's stdout and stderr go to
  anonymous files that this process reads once it ends, never to pipes, so a caller
  killed meanwhile (SIGKILL) does not take the command with it (a C program writing
  to a pipe whose reader is gone dies of SIGPIPE). The timeout is enforced as for any
  command while the caller lives; after its death, whoever recovers the operation
  must wait for the command and bound it (``workers.drivers.xlsave``). A Python
  exception in the caller (not a timeout) leaves such a command running, for the
  same reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from domsnap.errors import CommandFailed

__all__ = ["Call", "Completed", "RecordingRunner", "Runner", "SubprocessRunner"]

# After the process group is killed, how long to wait for the pipes to close.
_REAP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Completed:
    """The outcome of one finished command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


class Runner(Protocol):
    """Runs one command; raises CommandFailed on timeout, or on a non-zero exit if ``check``."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        input: bytes | None = None,
        outlive: bool = False,
        stderr_lines: Callable[[str], None] | None = None,
    ) -> Completed: ...


def _argv_list(argv: Sequence[str]) -> list[str]:
    """argv as a list; a plain string (a shell command slipping through) is refused."""
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a sequence of arguments, not a string")
    return [os.fspath(a) for a in argv]


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and everything it started (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass


class SubprocessRunner:
    """The real :class:`Runner`: ``subprocess`` with the rules of this module."""

    def __init__(self, env_extra: Mapping[str, str] | None = None) -> None:
        self._env_extra = dict(env_extra or {})

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._env_extra)
        env["LC_ALL"] = "C"
        return env

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        input: bytes | None = None,
        outlive: bool = False,
        stderr_lines: Callable[[str], None] | None = None,
    ) -> Completed:
        args = _argv_list(argv)
        if not args:
            raise ValueError("argv is empty")
        if stderr_lines is not None and not outlive:
            raise ValueError("stderr_lines is for a command that outlives its caller")
        if outlive:
            if input is not None:
                raise ValueError("a command that outlives its caller takes no input")
            return self._outliving(args, timeout=timeout, check=check, lines=stderr_lines)
        started = time.monotonic()
        proc = self._spawn(args, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                out, err = proc.communicate(timeout=_REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # a child left its group and holds the pipes
                out, err = b"", b""
            raise _timed_out(args, timeout, _decode(out), _decode(err)) from None
        except BaseException:  # KeyboardInterrupt, ...: never leave the group behind
            _kill_group(proc)
            proc.wait()
            raise
        return _done(args, proc.returncode, _decode(out), _decode(err), started, check)

    def _spawn(self, args: list[str], **stdio: Any) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(args, env=self._env(), start_new_session=True,
                                    close_fds=True, **stdio)
        except FileNotFoundError:
            raise CommandFailed(args, 127, f"{args[0]}: binary not found") from None
        except OSError as exc:  # not executable, exec format error, ...
            raise CommandFailed(args, 126, f"{args[0]}: cannot execute: {exc}") from None

    def _outliving(self, args: list[str], *, timeout: float, check: bool,
                   lines: Callable[[str], None] | None = None) -> Completed:
        """Run ``args`` with its output in anonymous files (see the module docstring);
        ``lines`` gets each line of stderr as soon as it is complete (within 5 ms)."""
        started = time.monotonic()
        with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
            proc = self._spawn(args, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f)
            try:
                if lines is None:
                    proc.wait(timeout=timeout)
                else:
                    _tail(proc, err_f.fileno(), lines, started + timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                raise _timed_out(args, timeout, _read_back(out_f), _read_back(err_f)) from None
            return _done(args, proc.returncode, _read_back(out_f), _read_back(err_f),
                         started, check)


def _tail(proc: subprocess.Popen[bytes], fd: int, lines: Callable[[str], None],
          deadline: float) -> None:
    """Wait for ``proc``, handing each complete line written to ``fd`` to ``lines``. The
    child shares the file's offset: read with ``pread`` at an offset of our own."""
    offset, partial = 0, b""
    while True:
        done = proc.poll() is not None
        while chunk := os.pread(fd, 65536, offset):
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            for line in complete:
                lines(_decode(line))
        if done:
            if partial:
                lines(_decode(partial))
            return
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, 0)
        time.sleep(0.005)


def _read_back(fh: Any) -> str:
    fh.seek(0)
    return _decode(fh.read())


def _timed_out(args: list[str], timeout: float, out: str, err: str) -> CommandFailed:
    note = f"killed after {timeout:g}s timeout"
    return CommandFailed(args, None, f"{err}\n{note}" if err.strip() else note, out)


def _done(args: list[str], returncode: int, out: str, err: str, started: float,
          check: bool) -> Completed:
    done = Completed(argv=args, returncode=returncode, stdout=out, stderr=err,
                     duration_s=time.monotonic() - started)
    if check and done.returncode != 0:
        raise CommandFailed(args, done.returncode, done.stderr, done.stdout)
    return done


@dataclass(frozen=True)
class Call:
    """One call recorded by :class:`RecordingRunner`."""

    argv: list[str]
    timeout: float
    check: bool
    input: bytes | None
    outlive: bool = False


Scripted = Completed | BaseException
"""A scripted answer: a result to return, or an exception to raise."""


class RecordingRunner:
    """A :class:`Runner` for tests: records every call, answers from a script.

    ``script`` is a list of answers consumed in order (a call beyond its end is
    an ``AssertionError``), or a callable given the :class:`Call`; ``None``
    answers every call with success and empty output. The answer's ``argv`` is
    replaced by the real one, and ``check`` behaves as in
    :class:`SubprocessRunner`, so drivers see exactly what they would in real life.
    """

    def __init__(
        self, script: Sequence[Scripted] | Callable[[Call], Scripted] | None = None
    ) -> None:
        self.calls: list[Call] = []
        self._script: list[Scripted] | Callable[[Call], Scripted] | None = (
            list(script) if isinstance(script, Sequence) else script
        )

    @staticmethod
    def result(stdout: str = "", *, returncode: int = 0, stderr: str = "") -> Completed:
        """A scripted result (its argv is filled in with the real call's)."""
        return Completed(
            argv=[], returncode=returncode, stdout=stdout, stderr=stderr, duration_s=0.0
        )

    @property
    def argvs(self) -> list[list[str]]:
        """The argv of every call, in order."""
        return [c.argv for c in self.calls]

    def _answer(self, call: Call) -> Scripted:
        if self._script is None:
            return self.result()
        if callable(self._script):
            return self._script(call)
        if not self._script:
            raise AssertionError(f"unexpected command (script exhausted): {call.argv}")
        return self._script.pop(0)

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        input: bytes | None = None,
        outlive: bool = False,
        stderr_lines: Callable[[str], None] | None = None,
    ) -> Completed:
        call = Call(argv=_argv_list(argv), timeout=timeout, check=check, input=input,
                    outlive=outlive)
        self.calls.append(call)
        answer = self._answer(call)
        if isinstance(answer, BaseException):
            raise answer
        done = replace(answer, argv=list(call.argv))
        if stderr_lines is not None:
            for line in done.stderr.splitlines():
                stderr_lines(line)
        if check and done.returncode != 0:
            raise CommandFailed(done.argv, done.returncode, done.stderr, done.stdout)
        return done
