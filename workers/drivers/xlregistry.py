"""The xl driver's host-side registry of domain configs.

xl knows only running domains, and after a live external snapshot its view
(``xl list -l``) still names the old image. So each domain's config is kept here,
under ``<state dir>/xl/<uuid>.json``: taken from ``xl list -l`` when the domain is
first seen, then owned by domsnap (updated after external snapshots, reverts and
merges). A domain that is shut off stays known, and can be started again from the
config written next to it (``<uuid>.cfg``, xl.cfg syntax).

Each entry also remembers the domid of the instance it describes. A domain with
another domid was started anew (xl create/restore, or rebuilt by xl's monitor at a
reboot): if domsnap started it, or it was rebuilt from the config domsnap pushed
(``xl config-update``), the entry already matches; if its owner did, from a config
naming other images, xl's view of that new instance is the truth and the entry is
taken from it again, unless those images are frozen backing files of the entry's
own overlays: that view is refused and recorded (``diverged``), see
:mod:`workers.drivers.xlrestart`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError

from domsnap.errors import UnknownDomain
from domsnap.xlcfg_write import format_domain_config
from schemas.config import DomainConfig
from workers.hostio.fsutil import atomic_write


class Entry(BaseModel):
    config: DomainConfig
    domid: int | None = None  # the instance this entry describes (None: not seen running)
    # set when instance ``domid`` runs on frozen images of this config's snapshots
    # (workers.drivers.xlrestart): what every request on that instance is refused with
    diverged: str | None = None


class Registry:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "xl"

    def _path(self, uuid: str) -> Path:
        return self.root / f"{uuid}.json"

    def uuids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))

    def get(self, uuid: str) -> Entry:
        try:
            return Entry.model_validate_json(self._path(uuid).read_text())
        except FileNotFoundError:
            raise UnknownDomain(f"no domain {uuid} on this host", domain=uuid) from None
        except ValidationError as exc:
            raise UnknownDomain(f"the registry entry of domain {uuid} is unreadable: {exc}",
                                domain=uuid) from None

    def find(self, uuid: str) -> Entry | None:
        try:
            return self.get(uuid)
        except UnknownDomain:
            return None

    def put(self, uuid: str, entry: Entry) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path(uuid), json.dumps(entry.model_dump(mode="json"), indent=2))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's lock for a read-modify-write: the heartbeat (which
        registers what xl shows) and the pools (which change configs) run in
        different processes."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def set_config(self, uuid: str, config: DomainConfig) -> None:
        with self.locked():
            old = self.find(uuid)
            self.put(uuid, Entry(config=config, domid=old.domid if old else None,
                                 diverged=old.diverged if old else None))

    def write_cfg(self, uuid: str, config: DomainConfig) -> Path:
        """The config as an xl.cfg file for ``xl create`` / ``xl restore`` (0600: it
        names the domain's images)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.root / f"{uuid}.cfg"
        atomic_write(path, format_domain_config(config))
        return path

    def remove(self, uuid: str) -> None:
        for suffix in (".json", ".cfg"):
            (self.root / f"{uuid}{suffix}").unlink(missing_ok=True)
