"""Scheduled backups on Celery beat with celery-redbeat (schedule and leader lock in
Redis), and the task each policy firing runs.

- ``PolicyScheduler`` is redbeat's scheduler that, on every tick, turns the policies in
  Redis into redbeat entries (one per policy; a paused policy's entry is disabled, a
  deleted policy's entry removed), so policies change without a restart. Only the beat
  instance holding redbeat's lock ticks: a second instance waits for the lock and
  never fires.
- Cron policies are evaluated in their own time zone (``ZonedCrontab``); ``missed =
  "skip"`` drops a run that came due while no scheduler ran, ``"run-once"`` (redbeat's
  own behaviour) runs it once.
- ``domsnap.policy.run`` (queue ``DOMSNAP_SCHEDULE_QUEUE``, ``domsnap.schedule``) runs one firing:
  :func:`workers.engine.schedule.run_policy`.

    celery -A tasks.schedule beat -S tasks.schedule:PolicyScheduler
    celery -A tasks.schedule worker -Q domsnap.schedule -P threads
(``domsnap scheduler`` runs both.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule
from redbeat.decoder import RedBeatJSONDecoder
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, get_redis

from domsnap.errors import NotFound
from domsnap.policies import PolicyStore
from domsnap.settings import get_settings
from domsnap.store import Store
from schemas.policy import Policy
from workers.app import app
from workers.engine.schedule import QueueOps, run_policy
from workers.routing import TASK_POLICY_RUN

log = logging.getLogger("domsnap.scheduler")
ENTRY_PREFIX = "policy:"

_settings = get_settings()
app.conf.update(
    redbeat_redis_url=_settings.redis_url,
    redbeat_redis_options={"socket_timeout": 10, "socket_connect_timeout": 5},
    redbeat_key_prefix=f"{_settings.key_prefix}:beat:",
    beat_scheduler="tasks.schedule:PolicyScheduler",
    beat_max_interval=_settings.beat_max_interval_s,
)


class ZonedCrontab(crontab):  # type: ignore[misc]
    """A crontab evaluated in its own IANA time zone (celery's uses the app's)."""

    def __init__(self, *args: Any, zone: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zone = zone

    @property
    def tz(self) -> dt.tzinfo:
        return ZoneInfo(self.zone)


def policy_schedule(policy: Policy) -> Any:
    if policy.cron:
        minute, hour, dom, month, dow = policy.cron.split()
        return ZonedCrontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month,
                            day_of_week=dow, zone=policy.timezone, app=app)
    return schedule(run_every=dt.timedelta(seconds=float(policy.interval_s or 60)), app=app)


class PolicyEntry(RedBeatSchedulerEntry):  # type: ignore[misc]
    """A redbeat entry that keeps a policy's time zone and missed-run choice."""

    @property
    def _extra(self) -> dict[str, Any]:
        return dict((self.kwargs or {}).get("timing") or {})

    @staticmethod
    def decode_definition(definition: str) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(definition, cls=RedBeatJSONDecoder)
        extra = (d.get("kwargs") or {}).get("timing") or {}
        sched = d.get("schedule")
        if extra.get("zone") and isinstance(sched, crontab):
            d["schedule"] = ZonedCrontab(
                minute=sched._orig_minute, hour=sched._orig_hour,
                day_of_week=sched._orig_day_of_week, day_of_month=sched._orig_day_of_month,
                month_of_year=sched._orig_month_of_year, zone=extra["zone"])
        return d

    def is_due(self) -> tuple[bool, float]:
        due, nxt = super().is_due()
        if not due or self._extra.get("missed") != "skip" or self.last_run_at is None:
            return due, nxt
        # due now: was the slot it is due for missed (long past) while no beat ran?
        # (remaining_estimate is the time from now to the slot: negative when overdue)
        late = -self.schedule.remaining_estimate(self.last_run_at).total_seconds()
        if late > float(self._extra.get("grace_s", 60)):
            log.info("policy entry %s: skipping a run missed by %.0f s", self.name, late)
            self.reschedule(self._default_now())
            return False, max(1.0, float(self.schedule.remaining_estimate(
                self.last_run_at).total_seconds()))
        return due, nxt


def entry_for(policy: Policy) -> PolicyEntry:
    period = float(policy.interval_s or 60)
    return PolicyEntry(
        name=ENTRY_PREFIX + policy.name, task=TASK_POLICY_RUN, schedule=policy_schedule(policy),
        args=[policy.name], enabled=not policy.paused,
        kwargs={"revision": policy.revision,
                "timing": {"zone": policy.timezone, "missed": policy.missed,
                           "grace_s": min(300.0, max(1.0, period / 2))}},
        # a run that no scheduler worker picked up within a period is dropped: the next
        # one comes
        options={"queue": get_settings().schedule_queue,
                 "expires": max(5.0, period) if policy.interval_s else 3600.0},
        app=app)


def sync_entries(scheduler_app: Any, store: Store) -> None:
    """Make redbeat's entries match the policies in Redis (new, changed, paused, gone)."""
    policies = {p.name: p for p in PolicyStore(store).all()}
    client = get_redis(scheduler_app)
    conf = scheduler_app.redbeat_conf
    prefix = conf.key_prefix + ENTRY_PREFIX
    for key in client.zrange(conf.schedule_key, 0, -1):
        name = str(key)[len(prefix):] if str(key).startswith(prefix) else None
        if name is not None and name not in policies:
            PolicyEntry(name=ENTRY_PREFIX + name, app=scheduler_app).delete()
            log.info("policy %s is gone: its schedule entry removed", name)
    for policy in policies.values():
        key = prefix + policy.name
        raw = client.hget(key, "definition")
        if raw:
            try:
                known = json.loads(raw, cls=RedBeatJSONDecoder)
                if (known.get("kwargs") or {}).get("revision") == policy.revision:
                    continue
            except ValueError:
                pass
        entry = entry_for(policy)
        entry.save()
        log.info("policy %s (revision %s): schedule entry %s", policy.name, policy.revision,
                 "disabled" if policy.paused else "saved")


class PolicyScheduler(RedBeatScheduler):  # type: ignore[misc]
    Entry = PolicyEntry

    def _store(self) -> Store:
        if getattr(self, "_domsnap_store", None) is None:
            s = get_settings()
            self._domsnap_store = Store.from_url(s.redis_url, prefix=s.key_prefix,
                                                 job_ttl_s=s.job_ttl_s)
        return self._domsnap_store

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            sync_entries(self.app, self._store())
        except Exception:  # noqa: BLE001 - Redis away: redbeat's own tick reports it
            log.exception("could not read the policies")
        return float(super().tick(*args, **kwargs))


@app.task(name=TASK_POLICY_RUN)
def policy_run(policy: str, revision: int | None = None,
               timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """One firing of ``policy`` (``revision`` and ``timing`` are the scheduler's)."""
    s = get_settings()
    store = Store.from_url(s.redis_url, prefix=s.key_prefix, job_ttl_s=s.job_ttl_s)
    pstore = PolicyStore(store)
    try:
        pol = pstore.get(policy)
    except NotFound:
        return {"policy": policy, "skipped": "the policy was deleted"}
    if pol.paused:
        return {"policy": policy, "skipped": "the policy is paused"}
    run = run_policy(pstore, QueueOps(store, app), pol)
    return {"policy": policy, "run_id": run.run_id,
            "outcomes": {d.domain_name or d.domain: d.outcome for d in run.domains}}


__all__ = ["PolicyEntry", "PolicyScheduler", "ZonedCrontab", "policy_run", "sync_entries"]
