"""Waking a waiting caller when its job moves, instead of polling.

Every job event and every change of a job record is followed by a PUBLISH on the
job's notify channel (``<prefix>:job:{<id>}:notify``, in the same pipeline or
transaction as the write). A waiter subscribes *before* it reads the job, so no
change falls between its read and its wait; a message only says "read again", it
carries no state, so a lost one costs at most one safety period (the waiter re-reads
at least every ``safety_s``).

Where pub/sub is refused (a deployment whose ACL predates the channel) or the
subscription breaks, the watch falls back to sleeping: the caller polls, as before.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

import redis

log = logging.getLogger("domsnap.client")


class JobWatch:
    """One subscription to one job's notify channel. ``wait(t)`` returns when a
    notification came, or after ``t`` seconds; never raises."""

    def __init__(self, client: Any, channel: str, *, confirm_s: float = 2.0) -> None:
        self.channel = channel
        self._ps: Any = None
        try:
            ps = client.pubsub(ignore_subscribe_messages=False)
            ps.subscribe(channel)
            deadline = time.monotonic() + confirm_s
            while time.monotonic() < deadline:  # the SUBSCRIBE reply: from now on we hear
                msg = ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if msg is not None and msg.get("type") == "subscribe":
                    self._ps = ps
                    return
            ps.close()
            log.debug("job watch %s: no subscribe confirmation; polling", channel)
        except (redis.RedisError, OSError) as exc:  # NOPERM, no pub/sub: poll instead
            log.debug("job watch %s: %s; polling", channel, exc)

    @property
    def subscribed(self) -> bool:
        return self._ps is not None

    def wait(self, timeout: float) -> bool:
        """True if a notification arrived within ``timeout`` (all pending ones are
        consumed); False after a timeout, or at once-slept when not subscribed."""
        timeout = max(0.0, timeout)
        if self._ps is None:
            time.sleep(timeout)
            return False
        try:
            got = False
            msg = self._ps.get_message(timeout=timeout)
            while msg is not None:
                got = got or msg.get("type") == "message"
                msg = self._ps.get_message(timeout=0.0)
            return got
        except (redis.RedisError, OSError, ValueError) as exc:
            log.debug("job watch %s broke: %s; polling", self.channel, exc)
            self.close()
            return False

    def close(self) -> None:
        ps, self._ps = self._ps, None
        if ps is not None:
            try:
                ps.close()
            except (redis.RedisError, OSError):
                pass

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
