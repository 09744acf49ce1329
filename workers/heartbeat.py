"""The host's heartbeat: liveness apart from the inventory.

A host is routed work only while its liveness key lives (``host_ttl_s``). Publishing
the inventory lists the domains, and on a dom0 ``xl list -l`` can take longer than
the TTL: in the nested Xen lab a busy dom0 listed for over 20 s, the key expired and
every request for every domain of the host was refused "no live worker" while the
worker was fine. So two threads:

- the inventory thread lists and publishes the domains every ``inventory_s`` (default
  ``heartbeat_s``; listing is the costly part: two ``xl`` runs on a dom0);
- the liveness thread renews the key every ``heartbeat_s`` while the inventory is
  *healthy*: the last listing succeeded, and the one running now (if any) has not run
  for more than ``inventory_stall_s``.

A host whose listing fails, or hangs for good, still stops looking alive (as before,
within one TTL of the failure, or of the stall limit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from domsnap.errors import DomsnapError

log = logging.getLogger("domsnap.worker")


class Heartbeat:
    """``publish`` lists and publishes the inventory (without touching liveness);
    ``renew`` renews the liveness key. Both may raise DomsnapError/OSError."""

    def __init__(self, publish: Callable[[], None], renew: Callable[[], None], *,
                 interval_s: float, stall_s: float, inventory_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish, self._renew = publish, renew
        self.interval_s, self.stall_s, self._clock = interval_s, stall_s, clock
        self.inventory_s = interval_s if inventory_s is None else inventory_s
        self._lock = threading.Lock()
        self._ok = False  # the last completed listing succeeded
        self._since: float | None = None  # start of the listing running now

    def publish_once(self) -> bool:
        with self._lock:
            self._since = self._clock()
        ok = False
        try:
            self._publish()
            ok = True
        except (DomsnapError, OSError) as exc:
            log.warning("inventory: %s", exc)
        finally:
            with self._lock:
                self._ok, self._since = ok, None
        return ok

    def healthy(self) -> bool:
        with self._lock:
            if self._since is not None and self._clock() - self._since > self.stall_s:
                return False
            return self._ok

    def renew_once(self) -> bool:
        """Renew liveness if the inventory is healthy; True if the key was renewed."""
        if not self.healthy():
            return False
        try:
            self._renew()
        except (DomsnapError, OSError) as exc:
            log.warning("heartbeat: %s", exc)
            return False
        return True

    def start(self, stop: threading.Event) -> list[threading.Thread]:
        def inventory() -> None:
            while not stop.wait(self.inventory_s):
                was_ok = self.healthy()
                if self.publish_once() and not was_ok:
                    # back from a failed listing (or Redis outage): alive again now,
                    # not a liveness period later
                    self.renew_once()

        def liveness() -> None:
            while not stop.is_set():
                self.renew_once()
                stop.wait(self.interval_s)

        threads = [threading.Thread(target=inventory, name="inventory", daemon=True),
                   threading.Thread(target=liveness, name="liveness", daemon=True)]
        for t in threads:
            t.start()
        return threads
