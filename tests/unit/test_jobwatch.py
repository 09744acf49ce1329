"""domsnap/jobwatch.py and Client.wait: a waiter is woken by the job's notify channel
(each event and each change of the record publishes), and falls back to polling where
pub/sub is refused. The safety re-read is set to an hour in these tests, so only a
notification can end a wait in time (a missing one fails the test by its timeout)."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from typing import Any

import fakeredis
import pytest
import redis

from domsnap.client import Client
from domsnap.errors import OperationTimeout
from domsnap.jobwatch import JobWatch
from domsnap.settings import Settings
from domsnap.store import Store
from schemas.models import JobRecord


def _store() -> Store:
    return Store(fakeredis.FakeRedis(decode_responses=True), prefix=f"t{uuidlib.uuid4().hex[:6]}")


def _job(store: Store) -> str:
    job_id = str(uuidlib.uuid4())
    store.create_job(JobRecord(job_id=job_id, op="create", domain=str(uuidlib.uuid4()),
                               host="h", name="s", submitted_at=time.time()))
    return job_id


def _later(fn: Any, delay: float = 0.3) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def test_an_event_and_a_record_change_each_wake_a_watch() -> None:
    store = _store()
    job_id = _job(store)
    with store.watch_job(job_id) as w:
        assert w.subscribed
        assert not w.wait(0.05)  # nothing yet
        store.add_event(job_id, "capture", "capturing")
        assert w.wait(5)
        store.update_job(job_id, state="running", started_at=time.time())
        assert w.wait(5)
    assert not w.subscribed  # closed on exit


def test_wait_returns_on_the_notify_of_the_end() -> None:
    store = _store()
    job_id = _job(store)
    client = Client(Settings(), store=store)
    seen: list[str] = []
    _later(lambda: (store.add_event(job_id, "capture", "capturing"),
                    store.update_job(job_id, state="succeeded", finished_at=time.time())))
    job = client.wait(job_id, timeout=20, on_event=lambda ev: seen.append(ev.step),
                      safety_s=3600)
    assert job.state == "succeeded"
    assert seen == ["capture"]


def test_wait_times_out_on_a_job_that_does_not_move() -> None:
    store = _store()
    job_id = _job(store)
    with pytest.raises(OperationTimeout):
        Client(Settings(), store=store).wait(job_id, timeout=0.3, safety_s=3600)


class _NoPubSub:
    """A client whose SUBSCRIBE is refused, as by an ACL without the channel."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def pubsub(self, **kw: Any) -> Any:
        raise redis.exceptions.NoPermissionError("NOPERM no permissions to access a channel")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_without_pubsub_the_watch_polls() -> None:
    store = _store()
    job_id = _job(store)
    w = JobWatch(_NoPubSub(store.r), store.keys.job_notify(job_id))
    assert not w.subscribed
    t0 = time.monotonic()
    assert not w.wait(0.05)
    assert time.monotonic() - t0 >= 0.04  # it slept: the caller's poll period


def test_wait_polls_when_pubsub_is_refused() -> None:
    store = _store()
    job_id = _job(store)
    store.watch_job = lambda j: JobWatch(_NoPubSub(store.r), store.keys.job_notify(j))  # type: ignore[method-assign]
    _later(lambda: store.update_job(job_id, state="failed", finished_at=time.time(),
                                    error={"code": "x", "message": "m", "details": {}}))
    job = Client(Settings(), store=store).wait(job_id, timeout=20, interval=0.05,
                                              safety_s=3600)
    assert job.state == "failed"
