"""What a host keeps on its own disk: sidecar records next to the snapshot files,
the journal of operations in flight, and pause markers.

Sidecars let Redis be rebuilt from the host (and the host from Redis); journals
let a restarted worker finish or undo what it left; pause markers are the
host-side guard that a domain domsnap paused gets resumed, and the gate that
keeps new work from starting while a pausing operation is in flight.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from schemas.models import SnapshotRecord
from workers.hostio.fsutil import atomic_write as _atomic_write


class HostFiles:
    def __init__(self, state_dir: Path, snapshot_dir: Path) -> None:
        self.state_dir = state_dir
        self.snapshot_dir = snapshot_dir
        self.journal_dir = state_dir / "journal"
        self.pause_dir = state_dir / "pausing"
        self.lock_dir = state_dir / "locks"

    # ------------------------------------------------------------ snapshot files

    def domain_dir(self, uuid: str) -> Path:
        """``<snapshot dir>/<uuid>/``, created 0700 (it holds guest RAM)."""
        d = self.snapshot_dir / uuid
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        return d

    def sidecar_path(self, uuid: str, name: str) -> Path:
        return self.snapshot_dir / uuid / f"{name}.json"

    def write_sidecar(self, record: SnapshotRecord) -> None:
        self.domain_dir(record.domain)
        _atomic_write(self.sidecar_path(record.domain, record.name),
                      record.model_dump_json(indent=2))

    def remove_sidecar(self, uuid: str, name: str) -> None:
        self.sidecar_path(uuid, name).unlink(missing_ok=True)

    def sidecars(self) -> list[SnapshotRecord]:
        out: list[SnapshotRecord] = []
        if not self.snapshot_dir.is_dir():
            return out
        for path in sorted(self.snapshot_dir.glob("*/*.json")):
            try:
                out.append(SnapshotRecord.model_validate_json(path.read_text()))
            except ValueError:
                continue
        return out

    # ------------------------------------------------------------ journal

    def journal_path(self, job_id: str) -> Path:
        return self.journal_dir / f"{job_id}.json"

    def write_journal(self, job_id: str, entry: dict[str, Any]) -> None:
        _atomic_write(self.journal_path(job_id), json.dumps({**entry, "updated_at": time.time()}))

    def read_journal(self, job_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.journal_path(job_id).read_text())
            return data
        except (FileNotFoundError, ValueError):
            return None

    def remove_journal(self, job_id: str) -> None:
        self.journal_path(job_id).unlink(missing_ok=True)
        for p in self.journal_dir.glob(f"{job_id}.disk-*"):
            p.unlink(missing_ok=True)
        (self.lock_dir / f"{job_id}.lock").unlink(missing_ok=True)

    def begin_disk(self, job_id: str, vdev: str) -> bool:
        """Note that an offline disk step of ``job_id`` starts on ``vdev``; False if an
        earlier attempt of it had started already (it was cut short: undo it first)."""
        self.journal_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.journal_dir / f"{job_id}.disk-{vdev}",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def journals(self) -> list[dict[str, Any]]:
        if not self.journal_dir.is_dir():
            return []
        out = []
        for p in sorted(self.journal_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except ValueError:
                continue
        return out

    # ------------------------------------------------------------ pause markers

    def mark_pausing(self, uuid: str, job_id: str, *, budget_s: float = 60.0) -> None:
        """The domain may be paused by ``job_id`` from now on, for at most ``budget_s``:
        past the deadline the host's guard (:mod:`workers.guard`) resumes it."""
        now = time.time()
        _atomic_write(self.pause_dir / uuid, json.dumps(
            {"job_id": job_id, "since": now, "budget_s": budget_s, "deadline": now + budget_s}))

    def pause_markers(self) -> dict[str, dict[str, Any]]:
        """domain uuid -> marker (job_id, since, budget_s, deadline) of every pausing
        operation in flight on this host."""
        out: dict[str, dict[str, Any]] = {}
        if self.pause_dir.is_dir():
            for p in self.pause_dir.iterdir():
                if p.name.startswith("."):
                    continue  # a marker being written (or left by a crash mid-write)
                try:
                    data = json.loads(p.read_text())
                    out[p.name] = {"job_id": str(data["job_id"]),
                                   "since": float(data.get("since", 0)),
                                   "deadline": float(data.get("deadline", 0))}
                except (OSError, ValueError, KeyError, TypeError):
                    continue
        return out

    def clear_pausing(self, uuid: str, job_id: str) -> None:
        path = self.pause_dir / uuid
        try:
            if json.loads(path.read_text()).get("job_id") == job_id:
                path.unlink()
        except (FileNotFoundError, ValueError):
            pass

    def pausing_jobs(self) -> dict[str, str]:
        """domain uuid -> job id of every pausing operation in flight on this host."""
        return {uuid: m["job_id"] for uuid, m in self.pause_markers().items()}

    # ------------------------------------------------------------ guard

    @property
    def guard_log_path(self) -> Path:
        return self.state_dir / "guard.log"

    def guard_record(self, event: dict[str, Any]) -> None:
        """Append what the guard did (one JSON line, fsynced): the host-side record of a
        budget that ran out, kept whether or not Redis is reachable."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = json.dumps({**event, "ts": time.time()}) + "\n"
        fd = os.open(self.guard_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def guard_events(self) -> list[dict[str, Any]]:
        try:
            lines = self.guard_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    @property
    def worker_pid_path(self) -> Path:
        """The pid of the ``domsnap worker`` supervisor serving this state dir."""
        return self.state_dir / "worker.pid"
