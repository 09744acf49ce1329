"""The one error tree of domsnap.

Every failure that leaves a domsnap module is one of these; third-party
errors (redis, celery, subprocess, sockets) are translated where they are
caught, at exactly one boundary each::

    DomsnapError                      every domsnap error; .code is a stable name
     ├── InvalidInput                 bad request / argument / config (names field + reason)
     │    └── ConfigFileError         a config file line that does not parse (names line + key)
     ├── NotFound
     │    ├── UnknownDomain
     │    ├── UnknownSnapshot
     │    └── UnknownJob
     ├── Conflict
     │    ├── DomainLocked            a mutating operation already runs on the domain
     │    └── SnapshotExists
     ├── Refused                      valid, but unsafe or unsupported here (never loses data)
     │    └── InsufficientSpace       the files would not fit (checked before anything is written)
     ├── HostUnavailable              the owning host has no live worker
     ├── SchemaMismatch               a message or record of another schema version
     ├── BackendError                 a service domsnap depends on failed
     │    ├── CommandFailed           a subprocess: keeps argv, exit code, stderr
     │    ├── QMPError                QMP: keeps what was sent and what came back
     │    ├── XlParseError            xl printed what its parser cannot read (keeps an excerpt)
     │    └── StoreUnavailable        Redis could not be reached
     ├── OperationTimeout
     └── OperationFailed              a job ended in failure (carries the worker's error)
          └── Cancelled               the job was cancelled (domsnap job-cancel)

Errors cross the queue as JSON (:meth:`DomsnapError.to_dict` /
:func:`from_dict`): never pickled.
"""

from __future__ import annotations

from typing import Any


class DomsnapError(Exception):
    """Base of every domsnap error."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = {k: v for k, v in details.items() if v is not None}

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInput(DomsnapError):
    """Input that fails validation; nothing was touched."""

    code = "invalid_input"
    exit_code = 2
    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class ConfigFileError(InvalidInput):
    code = "config_file"
    line: int | None = None
    key: str | None = None
    reason: str = ""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        where = ":".join(str(p) for p in (path or "<config>", line) if p is not None)
        shown = key if key is None or len(key) <= 64 else key[:64] + "..."
        prefix = f"{where}: " + (f"{shown}: " if shown else "")
        super().__init__(prefix + reason, field=key, path=path, line=line, key=key,
                         reason=reason)
        self.line = line
        self.key = key
        self.reason = reason


class NotFound(DomsnapError):
    code = "not_found"
    exit_code = 3


class UnknownDomain(NotFound):
    code = "unknown_domain"


class UnknownSnapshot(NotFound):
    code = "unknown_snapshot"


class UnknownJob(NotFound):
    code = "unknown_job"


class Conflict(DomsnapError):
    code = "conflict"
    exit_code = 4


class DomainLocked(Conflict):
    code = "domain_locked"


class LockLost(Conflict):
    """A holder whose lease ran out (or whose job was taken over by recovery) tried to
    commit: fencing refused it."""

    code = "lock_lost"


class SnapshotExists(Conflict):
    code = "snapshot_exists"


class Refused(DomsnapError):
    code = "refused"
    exit_code = 5


class InsufficientSpace(Refused):
    code = "insufficient_space"


class HostUnavailable(DomsnapError):
    code = "host_unavailable"
    exit_code = 6


class SchemaMismatch(DomsnapError):
    code = "schema_mismatch"
    exit_code = 7


class BackendError(DomsnapError):
    code = "backend"
    exit_code = 8


class CommandFailed(BackendError):
    """A subprocess failed; keeps argv, exit code and stderr."""

    code = "command_failed"
    argv: list[str] = []  # noqa: RUF012 - replaced per instance
    returncode: int | None = None
    stderr: str = ""
    stdout: str = ""

    def __init__(
        self, argv: list[str], returncode: int | None, stderr: str, stdout: str = ""
    ) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        rc = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(
            f"{argv[0]} failed ({rc}): {tail}",
            argv=argv,
            returncode=returncode,
            stderr=stderr,
        )
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout


class QMPError(BackendError):
    """A QMP exchange failed; keeps what was sent and what came back."""

    code = "qmp"
    sent: Any = None
    received: Any = None
    error_class: str | None = None

    def __init__(
        self,
        message: str,
        *,
        sent: Any = None,
        received: Any = None,
        error_class: str | None = None,
    ) -> None:
        super().__init__(message, sent=sent, received=received, error_class=error_class)
        self.sent = sent
        self.received = received
        self.error_class = error_class


class XlParseError(BackendError):
    """xl printed something the parsers (workers/drivers/xlparse.py) do not understand."""

    code = "xl_parse"
    reason: str = ""
    excerpt: str = ""

    def __init__(self, reason: str, text: str = "") -> None:
        text = text.strip()
        excerpt = "(empty output)" if not text else (
            repr(text[:100]) + ("..." if len(text) > 100 else ""))
        super().__init__(f"cannot parse xl output: {reason}: {excerpt}", reason=reason,
                         excerpt=excerpt)
        self.reason = reason
        self.excerpt = excerpt


class StoreUnavailable(BackendError):
    code = "store_unavailable"


class OperationTimeout(DomsnapError):
    code = "timeout"
    exit_code = 9


class OperationFailed(DomsnapError):
    code = "operation_failed"
    exit_code = 10


class Cancelled(OperationFailed):
    code = "cancelled"


_BY_CODE: dict[str, type[DomsnapError]] = {}
# attributes each class keeps in ``details`` and gets back in :func:`from_dict`
_ATTRS: dict[type[DomsnapError], tuple[str, ...]] = {}


def _register(cls: type[DomsnapError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(DomsnapError)
for _cls in _BY_CODE.values():
    _ATTRS[_cls] = tuple(k for c in _cls.__mro__ for k in getattr(c, "__annotations__", {})
                         if k not in ("code", "exit_code"))


def from_dict(data: dict[str, Any]) -> DomsnapError:
    """Rebuild an error that crossed the queue as JSON (class by code, never by import).

    The class's own attributes (``field``, ``argv``, ``sent``...) come back from
    ``details``, where each class keeps them."""
    cls = _BY_CODE.get(str(data.get("code", "")), DomsnapError)
    err = DomsnapError.__new__(cls)
    Exception.__init__(err, str(data.get("message", "")))
    err.message = str(data.get("message", ""))
    err.details = dict(data.get("details") or {})
    for key, value in err.details.items():
        if key in _ATTRS.get(cls, ()):
            setattr(err, key, value)
    return err
