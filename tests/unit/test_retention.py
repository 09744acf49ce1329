"""Retention rules against months of simulated time (the clock is an argument, so it is
frozen by construction), DST changes, edge cases, and properties over any history."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domsnap.retention import RULES, Candidate, decide, period_key
from schemas.policy import Retention

UTC = dt.UTC
BERLIN = "Europe/Berlin"


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, zone: str = "UTC", fold: int = 0
       ) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(zone), fold=fold).timestamp()


def hourly_history(start: float, hours: int) -> list[Candidate]:
    return [Candidate(f"s{i:05d}", start + i * 3600) for i in range(hours)]


def test_no_rule_keeps_everything() -> None:
    cands = hourly_history(ts(2026, 1, 1), 50)
    d = decide(cands, Retention(), now=ts(2026, 3, 1))
    assert set(d.keep) == {c.name for c in cands} and not d.delete


def test_keep_last_keeps_the_newest_n() -> None:
    cands = hourly_history(ts(2026, 1, 1), 10)
    d = decide(cands, Retention(keep_last=3), now=ts(2026, 1, 2))
    assert set(d.keep) == {"s00009", "s00008", "s00007"}
    assert d.keep["s00009"] == ["keep-last"]
    assert set(d.delete) == {f"s{i:05d}" for i in range(7)}
    assert all(why == "no rule keeps it" for why in d.delete.values())


def test_three_months_of_hourly_snapshots_daily_weekly_monthly() -> None:
    """Hourly snapshots from 1 Jan to 31 Mar 2026 (UTC), judged on 1 Apr."""
    cands = hourly_history(ts(2026, 1, 1), 90 * 24)
    ret = Retention(keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=3)
    d = decide(cands, ret, now=ts(2026, 4, 1))
    kept = sorted(d.keep, reverse=True)
    # keep-last: the two newest; daily: the newest of each of the 7 newest days, the
    # newest day (31 Mar) already held by keep-last, so 7 more days back to 24 Mar
    assert kept[:2] == ["s02159", "s02158"]
    daily = sorted((n for n, r in d.keep.items() if "keep-daily" in r), reverse=True)
    days = [dt.datetime.fromtimestamp(next(c.created_at for c in cands if c.name == n), UTC).day
            for n in daily]
    assert days == [30, 29, 28, 27, 26, 25, 24]
    # every kept daily is the last snapshot of its day (23:00)
    assert all(dt.datetime.fromtimestamp(
        next(c.created_at for c in cands if c.name == n), UTC).hour == 23 for n in daily)
    monthly = [n for n, r in d.keep.items() if "keep-monthly" in r]
    months = sorted(dt.datetime.fromtimestamp(
        next(c.created_at for c in cands if c.name == n), UTC).month for n in monthly)
    assert months == [1, 2]  # March is held already (keep-last); Jan and Feb count
    assert len(d.keep) == 2 + 7 + len([n for n, r in d.keep.items() if r == ["keep-weekly"]]) \
        + 2
    assert set(d.keep).isdisjoint(d.delete)
    assert set(d.keep) | set(d.delete) == {c.name for c in cands}


def test_two_snapshots_in_the_same_hour_keep_only_the_newer() -> None:
    base = ts(2026, 5, 1, 10)
    cands = [Candidate("a", base + 60), Candidate("b", base + 120), Candidate("c", base - 60)]
    d = decide(cands, Retention(keep_hourly=2), now=base + 3600)
    assert set(d.keep) == {"b", "c"} and set(d.delete) == {"a"}


def test_gaps_do_not_stretch_the_rules() -> None:
    """keep-daily 3 over days with gaps: the 3 newest days that have snapshots."""
    cands = [Candidate(f"d{day}", ts(2026, 6, day, 12)) for day in (1, 2, 10, 20)]
    d = decide(cands, Retention(keep_daily=3), now=ts(2026, 7, 1))
    assert set(d.keep) == {"d20", "d10", "d2"} and set(d.delete) == {"d1"}


def test_protected_are_never_deleted_and_count_toward_no_rule() -> None:
    cands = hourly_history(ts(2026, 1, 1), 6)
    cands = [Candidate(c.name, c.created_at, protected=c.name in ("s00005", "s00001"))
             for c in cands]
    d = decide(cands, Retention(keep_last=2), now=ts(2026, 2, 1))
    assert set(d.protected) == {"s00005", "s00001"}
    assert set(d.keep) == {"s00004", "s00003"}  # the newest unprotected ones
    assert set(d.delete) == {"s00002", "s00000"}


def test_expiry_deletes_what_rules_keep() -> None:
    now = ts(2026, 3, 1)
    cands = [Candidate("old", now - 10 * 86400), Candidate("new", now - 3600)]
    d = decide(cands, Retention(keep_last=5, expire_after_s=7 * 86400), now=now)
    assert set(d.keep) == {"new"} and d.delete["old"].startswith("expired")
    only_expiry = decide(cands, Retention(expire_after_s=7 * 86400), now=now)
    assert set(only_expiry.keep) == {"new"} and set(only_expiry.delete) == {"old"}


def test_dst_fall_back_repeated_hour_is_two_hours() -> None:
    """Berlin, 25 Oct 2026: 02:00-02:59 happens twice (CEST, then CET)."""
    first = ts(2026, 10, 25, 2, 30, BERLIN, fold=0)
    second = ts(2026, 10, 25, 2, 30, BERLIN, fold=1)
    assert second - first == 3600
    tz = ZoneInfo(BERLIN)
    assert period_key("hourly", first, tz) != period_key("hourly", second, tz)
    assert period_key("daily", first, tz) == period_key("daily", second, tz)
    d = decide([Candidate("cest", first), Candidate("cet", second)],
               Retention(keep_hourly=2), now=second + 60, zone=BERLIN)
    assert set(d.keep) == {"cest", "cet"}


def test_dst_days_are_local_calendar_days() -> None:
    """Spring forward (29 Mar 2026, 23 h) and fall back (25 Oct, 25 h): one snapshot an
    hour, keep-daily keeps the last one of each local day, 23:00 local every time."""
    for start, hours in ((ts(2026, 3, 27, 0, 0, BERLIN), 24 * 4),
                         (ts(2026, 10, 23, 0, 0, BERLIN), 24 * 4)):
        cands = hourly_history(start, hours + 1)
        d = decide(cands, Retention(keep_daily=4), now=start + 5 * 86400, zone=BERLIN)
        local = sorted(dt.datetime.fromtimestamp(
            next(c.created_at for c in cands if c.name == n), ZoneInfo(BERLIN))
            for n in d.keep)
        # the newest is 00:00 of day 5 (its own day); the others close their days
        assert [x.hour for x in local[:-1]] == [23, 23, 23]
        assert len({x.date() for x in local}) == 4
    # the same history in UTC buckets keeps other snapshots: the zone matters
    cands = hourly_history(ts(2026, 3, 27, 0, 0, BERLIN), 24 * 4 + 1)
    in_utc = decide(cands, Retention(keep_daily=4), now=0, zone="UTC")
    in_berlin = decide(cands, Retention(keep_daily=4), now=0, zone=BERLIN)
    assert set(in_utc.keep) != set(in_berlin.keep)


def test_weekly_uses_iso_weeks_across_the_year_end() -> None:
    # Thu 31 Dec 2026 and Fri 1 Jan 2027 are in ISO week 2026-W53
    tz = ZoneInfo("UTC")
    assert period_key("weekly", ts(2026, 12, 31), tz) == period_key("weekly", ts(2027, 1, 1), tz)
    assert period_key("yearly", ts(2026, 12, 31), tz) != period_key("yearly", ts(2027, 1, 1), tz)


# ---------------------------------------------------------------- properties

histories = st.lists(
    st.tuples(st.floats(min_value=1.7e9, max_value=1.7e9 + 400 * 86400, allow_nan=False),
              st.booleans()),
    min_size=0, max_size=60, unique_by=lambda t: t[0])
counts = st.one_of(st.none(), st.integers(min_value=0, max_value=6))
retentions = st.builds(Retention, keep_last=counts, keep_hourly=counts, keep_daily=counts,
                       keep_weekly=counts, keep_monthly=counts, keep_yearly=counts)
zones = st.sampled_from(["UTC", BERLIN, "America/New_York", "Asia/Kolkata"])


@settings(max_examples=300, deadline=None)
@given(histories, retentions, zones)
def test_property_every_rule_holds_and_protected_are_never_deleted(
        hist: list[tuple[float, bool]], ret: Retention, zone: str) -> None:
    cands = [Candidate(f"s{i}", t, p) for i, (t, p) in enumerate(hist)]
    d = decide(cands, ret, now=1.7e9 + 500 * 86400, zone=zone)
    names = {c.name for c in cands}
    protected = {c.name for c in cands if c.protected}
    # a partition: each snapshot kept, deleted or protected, exactly once
    assert set(d.protected) == protected
    assert not (set(d.keep) & set(d.delete)) and not (protected & set(d.delete))
    assert set(d.keep) | set(d.delete) | protected == names
    pool = sorted((c for c in cands if not c.protected), key=lambda c: c.created_at,
                  reverse=True)
    if not ret.has_rules:
        assert not d.delete
        return
    # keep-last: the N newest unprotected
    if ret.keep_last:
        assert {c.name for c in pool[:ret.keep_last]} <= set(d.keep)
    tz = ZoneInfo(zone)
    for rule in RULES:
        n = getattr(ret, f"keep_{rule}")
        if not n:
            continue
        newest_periods: list[object] = []
        for c in pool:
            k = period_key(rule, c.created_at, tz)
            if k not in newest_periods:
                newest_periods.append(k)
        for k in newest_periods[:n]:
            assert any(period_key(rule, c.created_at, tz) == k and c.name in d.keep
                       for c in pool), f"{rule}: period {k} has no kept snapshot"
    # nothing is kept without a reason, and never more than the rules allow
    assert all(d.keep[n] for n in d.keep)
    limit = sum(getattr(ret, f"keep_{r}") or 0 for r in ("last", *RULES))
    assert len(d.keep) <= limit


@settings(max_examples=100, deadline=None)
@given(histories, retentions)
def test_property_deciding_again_after_the_deletes_deletes_nothing_more(
        hist: list[tuple[float, bool]], ret: Retention) -> None:
    """Pruning is stable: once the deletes are done, the same rules keep the rest."""
    cands = [Candidate(f"s{i}", t, p) for i, (t, p) in enumerate(hist)]
    first = decide(cands, ret, now=2e9)
    rest = [c for c in cands if c.name not in first.delete]
    again = decide(rest, ret, now=2e9)
    assert not again.delete


def test_retention_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="keep_daily"):
        Retention(keep_daily=-1)
