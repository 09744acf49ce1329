"""The shapes of domsnap's data: requests, results, records, events, configs.

No I/O here. ``SCHEMA_VERSION`` is carried by every message and record so that
mixed versions during a rolling upgrade are detected, not misread.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
