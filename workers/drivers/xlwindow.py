"""Marks of the xl driver's save/restore windows, so a domain is never left down.

A window (:meth:`workers.drivers.xl.XlDriver._window`) saves a domain with
``xl save`` (xl destroys it once its RAM is in the file), works on its images
offline, and restores it with ``xl restore``. A worker killed in between leaves
the guest nowhere but in that file. So the window first writes a mark,
``<state dir>/xl/windows/<uuid>.json``, naming the file, the run state to
restore and the phase reached, and holds an ``flock`` on it until the domain runs
again. The kernel drops the lock of a dead process: a mark whose lock is free
outlived its window, and :meth:`WindowMarks.orphaned` hands it to recovery (the
worker's start-up recovery and the host's guard), which restores the domain
from the file. The mark is written and locked under a private name, then renamed
into place: a mark that can be seen at all is complete, and locked before it was.

Phases: ``saving`` (``xl save`` runs; the domain still exists, maybe suspended),
``saved`` (the domain is gone, the file complete), ``restoring`` (``xl restore``
runs, the host's config already names the new images).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError
from schemas.config import DomainConfig

log = logging.getLogger("domsnap.xl")

_SIZE = 16384  # a mark's fixed size on disk (paths are at most 4096 bytes each)


def touch_private(path: Path) -> None:
    """Create ``path`` 0600 in a 0700 directory before any byte of guest RAM goes in
    (xl creates its save file with the umask: 0644 seen)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def retarget(config: DomainConfig, moves: dict[str, tuple[str, str]]) -> DomainConfig:
    """``config`` with every disk whose image is a key of ``moves`` pointed at the image
    and format of its value (a raw disk's qcow2 overlay must be restored as qcow2)."""
    return config.model_copy(update={"disks": [
        d.model_copy(update={"target": moves[d.target][0], "format": moves[d.target][1]})
        if d.target in moves else d for d in config.disks]})


@dataclass
class Mark:
    """An open window's mark; ``phase`` is rewritten as the window goes on."""

    path: Path
    fd: int
    body: dict[str, Any]

    def phase(self, phase: str) -> None:
        """Rewrite the mark in place with one write of a fixed size (no truncate): a
        process killed at any instant leaves the old content or the new one."""
        self.body["phase"] = phase
        data = json.dumps(self.body).encode()
        if len(data) > _SIZE:
            raise ValueError(f"window mark of {self.body['uuid']} too long")
        os.pwrite(self.fd, data.ljust(_SIZE), 0)
        os.fsync(self.fd)


class WindowMarks:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uuid: str) -> Path:
        return self.root / f"{uuid}.json"

    def count(self) -> int:
        """Marks present: windows open now or left by a dead worker."""
        return len(list(self.root.glob("*.json"))) if self.root.is_dir() else 0

    @contextmanager
    def held(self, uuid: str, *, file: Path, paused: bool, keep: bool) -> Iterator[Mark]:
        """The mark of a window opened now, held (locked) until the block ends; it is
        removed then only if the window reached ``done`` (the domain runs again):
        otherwise it stays for recovery, with its lock free once this process ends."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(uuid)
        # written and locked under a private name, then renamed into place: a mark
        # that can be seen is complete and was locked before it could be seen
        tmp = self.root / f".{uuid}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mark = Mark(path, fd, {"uuid": uuid, "file": str(file), "paused": paused,
                                   "keep": keep})
            mark.phase("saving")
            os.replace(tmp, path)
            yield mark
            if mark.body["phase"] == "done":
                path.unlink(missing_ok=True)
        finally:
            tmp.unlink(missing_ok=True)  # there only if it never got into place
            os.close(fd)

    @contextmanager
    def orphaned(self, *, blocking: bool) -> Iterator[list[Mark]]:
        """The marks whose window is no longer open (its process died), each locked
        for the block; the caller restores each domain and calls :meth:`drop`.
        ``blocking``: wait for a window still open (start-up recovery, where no other
        worker runs; a lock held then is the guard's, restoring); the guard passes
        False and leaves a live worker's window alone."""
        found: list[Mark] = []
        try:
            for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
                mark = self._take(path, blocking=blocking)
                if mark is not None:
                    found.append(mark)
            yield found
        finally:
            for mark in found:
                os.close(mark.fd)

    @staticmethod
    def _take(path: Path, *, blocking: bool) -> Mark | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                os.close(fd)
                return None  # its window is open: its worker lives
            log.info("window %s is held (the guard is restoring its domain): waiting",
                     path.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_nlink == 0:  # dropped while this process waited
                os.close(fd)
                return None
            raw = os.pread(fd, _SIZE, 0)
            body = json.loads(raw) if raw.strip() else {}
        except (OSError, ValueError) as exc:
            log.error("window mark %s unreadable (%s): dropped", path, exc)
            body = {}
        if not isinstance(body, dict) or not {"uuid", "file", "phase"} <= body.keys():
            log.error("window mark %s is not one domsnap wrote: dropped", path)
            path.unlink(missing_ok=True)
            os.close(fd)
            return None
        return Mark(path, fd, body)

    @staticmethod
    def drop(mark: Mark) -> None:
        mark.path.unlink(missing_ok=True)

    def restore_orphans(self, *, blocking: bool, running: Callable[[str], bool],
                        restore: Callable[[str, Path, bool], None],
                        wait: Callable[[Path], object] = lambda file: None) -> int:
        """Settle every orphaned mark: first ``wait(file)`` for an ``xl save`` into the
        window's file that outlived the window's worker (it destroys the domain when it
        ends); then a domain that is down is restored from the file (``restore(uuid,
        file, paused)``); then the mark goes, with a scratch file. Returns how many could
        not be settled (their marks stay)."""
        left = 0
        with self.orphaned(blocking=blocking) as marks:
            for mark in marks:
                wait(Path(str(mark.body["file"])))
                if not self._settle(mark, running, restore):
                    left += 1
        return left

    @staticmethod
    def _settle(mark: Mark, running: Callable[[str], bool],
                restore: Callable[[str, Path, bool], None]) -> bool:
        uuid, file = str(mark.body["uuid"]), Path(str(mark.body["file"]))
        try:
            up = running(uuid)
            if not up and file.is_file():
                log.warning("domain %s was left down by a save/restore window cut short "
                            "(phase %s): restoring it from %s", uuid, mark.body["phase"], file)
                restore(uuid, file, bool(mark.body.get("paused")))
            elif not up:
                log.error("domain %s was left down by a save/restore window cut short and "
                          "its save file %s is gone: it stays shut off", uuid, file)
            elif mark.body["phase"] == "restoring":
                log.error("domain %s exists after an xl restore that was cut short; its "
                          "memory image is kept at %s for the operator", uuid, file)
                WindowMarks.drop(mark)
                return True
        except DomsnapError as exc:
            log.error("domain %s: restoring it after a save/restore window cut short "
                      "failed (tried again later): %s", uuid, exc)
            return False
        if not mark.body.get("keep"):
            file.unlink(missing_ok=True)
        WindowMarks.drop(mark)
        return True
