"""workers/heartbeat.py: liveness is renewed while the inventory is healthy (the last
listing succeeded, and the running one, if any, is within the stall limit)."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from domsnap.errors import DomsnapError
from workers.heartbeat import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _beat(publish: object = None, stall: float = 10.0) -> tuple[Heartbeat, Clock, list[float]]:
    clock, renewed = Clock(), []

    def ok() -> None:
        return None

    beat = Heartbeat(publish or ok,  # type: ignore[arg-type]
                     lambda: renewed.append(clock.t), interval_s=1.0, stall_s=stall,
                     clock=clock)
    return beat, clock, renewed


def test_no_liveness_before_a_first_listing() -> None:
    beat, _, renewed = _beat()
    assert not beat.renew_once()
    assert renewed == []


def test_a_listing_that_fails_stops_liveness_and_one_that_works_restores_it() -> None:
    fail = [True]

    def publish() -> None:
        if fail[0]:
            raise DomsnapError("cannot parse xl output")

    beat, _, renewed = _beat(publish)
    assert not beat.publish_once()
    assert not beat.renew_once()
    fail[0] = False
    assert beat.publish_once()
    assert beat.renew_once()
    assert len(renewed) == 1


def test_liveness_is_renewed_during_a_listing_until_the_stall_limit() -> None:
    started, release = threading.Event(), threading.Event()
    calls = [0]

    def publish() -> None:
        calls[0] += 1
        if calls[0] == 2:
            started.set()
            release.wait(10)

    beat, clock, renewed = _beat(publish, stall=10.0)
    assert beat.publish_once()
    t = threading.Thread(target=beat.publish_once)
    t.start()
    assert started.wait(10)
    for now in (1.0, 5.0, 10.0):  # a slow listing: still alive
        clock.t = now
        assert beat.renew_once()
    clock.t = 10.5  # stalled: no more renewals
    assert not beat.renew_once()
    release.set()
    t.join(10)
    assert beat.renew_once()  # it completed: alive again
    assert renewed == [1.0, 5.0, 10.0, 10.5]


def test_a_failing_renewal_is_reported_not_raised() -> None:
    def renew() -> None:
        raise OSError("connection refused")

    beat = Heartbeat(lambda: None, renew, interval_s=1.0, stall_s=5.0)
    assert beat.publish_once()
    assert not beat.renew_once()


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 100)), min_size=1, max_size=20),
       st.floats(0.1, 50))
def test_renewal_follows_the_model(listings: list[tuple[bool, float]], stall: float) -> None:
    """After each completed listing (ok?, then a new one running for ``age`` seconds),
    liveness is renewed exactly when the completed one was ok and ``age <= stall``."""
    for ok, age in listings:
        clock = Clock()
        beat = Heartbeat(lambda: None, lambda: None, interval_s=1.0, stall_s=stall,
                         clock=clock)

        def publish(ok: bool = ok) -> None:
            if not ok:
                raise DomsnapError("x")

        beat._publish = publish
        beat.publish_once()
        with beat._lock:
            beat._since = 0.0  # the next listing started at 0
        clock.t = age
        assert beat.renew_once() == (ok and age <= stall)


def test_liveness_comes_back_with_the_first_listing_after_a_failure() -> None:
    """After a failed listing (a Redis outage, say) the host is alive again as soon as a
    listing succeeds, not one liveness period later (here the period is an hour)."""
    results = iter([False, True])
    published = threading.Event()

    def publish() -> None:
        ok = next(results, True)
        if not ok:
            raise DomsnapError("redis is away")
        published.set()

    renewed = threading.Event()
    beat = Heartbeat(publish, renewed.set, interval_s=3600.0, stall_s=60.0, inventory_s=0.01)
    assert not beat.publish_once()  # the listing at boot failed
    stop = threading.Event()
    threads = beat.start(stop)
    try:
        assert published.wait(10)
        assert renewed.wait(10), "the key was not renewed after the listing came back"
    finally:
        stop.set()
        for t in threads:
            t.join(5)
