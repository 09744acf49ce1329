"""Record a mutating operation in the audit log: the host's JSONL file and the capped
Redis stream. Best effort on both sides, never failing the operation it records:
the host file is written first, so an entry survives Redis being down."""

from __future__ import annotations

import logging
import time
from typing import Any

from domsnap.errors import DomsnapError
from domsnap.settings import Settings
from domsnap.store import Store
from schemas.models import AuditEntry
from workers.hostio import auditlog

log = logging.getLogger("domsnap.audit")


def record(settings: Settings, store: Store | None, **fields: Any) -> AuditEntry:
    entry = AuditEntry(ts=fields.pop("ts", None) or time.time(),
                       host=fields.pop("host", None) or settings.host, **fields)
    try:
        auditlog.append(settings.state_dir, entry)
    except OSError as exc:
        log.error("audit: cannot append to %s: %s", auditlog.audit_path(settings.state_dir), exc)
    if store is not None:
        try:
            store.add_audit(entry)
        except DomsnapError as exc:
            log.error("audit: cannot add to Redis: %s", exc)
    return entry
