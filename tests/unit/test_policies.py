"""Policies, labels, protection, selection, run history and metrics against fakeredis;
policy validation (each error names the field); the scheduler's redbeat entries."""

from __future__ import annotations

import datetime as dt
from typing import Any

import fakeredis
import pytest

from domsnap.errors import Conflict, InvalidInput, NotFound, UnknownSnapshot
from domsnap.metrics import exposition, record_job
from domsnap.policies import PolicyStore, parse_labels, policy_period_s
from domsnap.store import Store
from schemas.config import DomainConfig
from schemas.models import DiskSnapshot, DomainInfo, HostInventory, SnapshotRecord
from schemas.policy import DomainOutcome, Policy, PolicyRun, render_name
from workers.engine.schedule import chain_links, plan_prune, policy_records

U1 = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
U2 = "0b0f3b70-5a8e-4b8c-9d57-1e2f3a4b5c6d"
U3 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.fixture
def store() -> Store:
    r: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    s = Store(r, job_ttl_s=3600)
    for host, doms in (("h1", [(U1, "web1"), (U2, "db1")]), ("h2", [(U3, "web2")])):
        s.publish_inventory(HostInventory(host=host, driver="qemu", published_at=1.0, domains=[
            DomainInfo(uuid=u, name=n, state="running") for u, n in doms]), 30)
    return s


@pytest.fixture
def pst(store: Store) -> PolicyStore:
    return PolicyStore(store)


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
                            "select": {"labels": {"tier": "web"}},
                            "retention": {"keep_daily": 7}}
    base.update(kw)
    return base


def rec(name: str, created_at: float, *, policy: str | None = "nightly", uuid: str = U1,
        external: bool = False) -> SnapshotRecord:
    disks = [DiskSnapshot(vdev="vda", type="external", format="qcow2", file=f"/i/{name}.0",
                          overlay=f"/i/{name}.1")] if external else []
    return SnapshotRecord(name=name, domain=uuid, domain_name="web1", host="h1",
                          driver="qemu", created_at=created_at, domain_state="running",
                          disk_only=True, disks=disks, policy=policy,
                          domain_config=DomainConfig(name="web1", uuid=uuid))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "bad/name"}, "name"),
    ({"cron": "0 3 * *"}, "cron"),
    ({"cron": None}, "exactly one of cron and interval_s"),
    ({"interval_s": 60}, "exactly one of cron and interval_s"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"select": {}}, "select"),
    ({"select": {"labels": {"bad key": "x"}}}, "select.labels"),
    ({"name_template": "{policy}/{utc}"}, "name_template"),
    ({"name_template": "{host}-{utc}"}, "name_template"),
    ({"name_template": "{policy.__class__}"}, "name_template"),
    ({"name_template": "{policy"}, "name_template"),
    ({"retention": {"keep_last": -1}}, "retention.keep_last"),
    ({"max_per_host": 0}, "max_per_host"),
    ({"type": "sideways"}, "type"),
])
def test_bad_policy_names_the_field(pst: PolicyStore, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        pst.create(body(**change))
    assert field in err.value.message
    assert pst.all() == []  # nothing stored


def test_cron_out_of_range_is_refused_by_celerys_parser(pst: PolicyStore) -> None:
    with pytest.raises(InvalidInput, match="cron"):
        pst.create(body(cron="61 3 * * *"))


def test_create_get_list_replace_pause_resume_delete(pst: PolicyStore) -> None:
    p = pst.create(body())
    assert p.revision == 1 and p.created_at > 0 and not p.paused
    with pytest.raises(Conflict, match="exists"):
        pst.create(body())
    p2 = pst.create(body(retention={"keep_last": 3}), replace=True)
    assert p2.revision == 2 and p2.created_at == p.created_at
    assert pst.get("nightly").retention.keep_last == 3
    assert pst.set_paused("nightly", True).paused
    # a replace keeps the pause (only resume undoes it)
    assert pst.create(body(), replace=True).paused
    assert not pst.set_paused("nightly", False).paused
    assert [x.name for x in pst.all()] == ["nightly"]
    pst.delete("nightly")
    with pytest.raises(NotFound):
        pst.get("nightly")
    with pytest.raises(InvalidInput, match="policy"):
        pst.get("no/such")


def test_labels_and_selection(pst: PolicyStore) -> None:
    pst.set_labels(U1, {"tier": "web", "env": "prod"}, [])
    pst.set_labels(U3, {"tier": "web"}, [])
    pst.set_labels(U2, {"tier": "db"}, [])
    p = pst.create(body())
    assert [d.name for _, d in pst.select(p)] == ["web1", "web2"]
    both = pst.create(body(name="prod", select={"labels": {"tier": "web", "env": "prod"}}))
    assert [d.name for _, d in pst.select(both)] == ["web1"]
    by_host = pst.create(body(name="h1", select={"hosts": ["h1"], "domains": [U3]}))
    assert [(h, d.name) for h, d in pst.select(by_host)] == [
        ("h1", "db1"), ("h1", "web1"), ("h2", "web2")]
    assert pst.set_labels(U1, {}, ["env"]) == {"tier": "web"}
    with pytest.raises(InvalidInput, match=r"labels\[1\]"):
        parse_labels(["a=b", "novalue"])


def test_protection_needs_a_snapshot(pst: PolicyStore, store: Store) -> None:
    with pytest.raises(UnknownSnapshot):
        pst.protect(U1, "nope", True)
    store.commit_snapshot(rec("s1", 1.0))
    pst.protect(U1, "s1", True)
    assert pst.protected(U1) == {"s1"}
    pst.protect(U1, "s1", False)
    with pytest.raises(UnknownSnapshot, match="not protected"):
        pst.protect(U1, "s1", False)


def test_prune_plan_only_touches_the_policys_unprotected_snapshots(
        pst: PolicyStore, store: Store) -> None:
    pol = pst.create(body(retention={"keep_last": 1}))
    day = 86400.0
    for i, (name, policy) in enumerate([("m1", None), ("n1", "nightly"), ("o1", "other"),
                                        ("n2", "nightly"), ("n3", "nightly"),
                                        ("n4", "nightly")]):
        store.commit_snapshot(rec(name, 1e9 + i * day, policy=policy))
    pst.protect(U1, "n2", True)
    info = DomainInfo(uuid=U1, name="web1", state="running")
    plan = plan_prune(pst, pol, info, now=1e9 + 10 * day)
    assert set(plan.decision.keep) == {"n4"}
    assert plan.decision.protected == ["n2"]
    assert set(plan.decision.delete) == {"n1", "n3"}  # never m1 (manual) nor o1
    assert [r.name for r in policy_records(store.list_snapshots(U1), "other")] == ["o1"]


def test_chain_links_count_external_disks_oldest_first() -> None:
    recs = [rec("b", 2.0, external=True), rec("a", 1.0, external=True), rec("i", 3.0)]
    assert [r.name for r in chain_links(recs)["vda"]] == ["a", "b"]


def test_run_history_is_newest_first_and_capped(pst: PolicyStore) -> None:
    pst.create(body())
    for i in range(55):
        pst.end_run(PolicyRun(run_id=f"r{i}", policy="nightly", started_at=float(i),
                              finished_at=i + 0.5, domains=[DomainOutcome(
                                  domain=U1, outcome="succeeded", pause_ms=float(i))]))
    runs = pst.runs("nightly", 100)
    assert len(runs) == 50 and runs[0].run_id == "r54" and runs[0].pause_window == (54, 54)
    assert pst.policy_success() == {"nightly": 54.5}


def test_render_name_and_period() -> None:
    when = dt.datetime(2026, 7, 1, 3, 0, tzinfo=dt.UTC).timestamp()
    assert render_name("{policy}-{time:%H%M}-{epoch}", policy="p", domain="d", when=when,
                       zone="Europe/Berlin") == f"p-0500-{int(when)}"
    daily = Policy.model_validate(body())
    assert policy_period_s(daily, now=when) == 86400
    hourly = Policy.model_validate(body(cron="*/15 * * * *"))
    assert policy_period_s(hourly, now=when) == 900
    assert policy_period_s(Policy.model_validate(body(cron=None, interval_s=7)), now=0) == 7


def test_metrics_exposition(pst: PolicyStore, store: Store) -> None:
    pst.create(body(cron=None, interval_s=60))
    store.commit_snapshot(rec("n1", 1000.0).model_copy(update={"memory_bytes": 4096}))
    record_job(store, "create", "succeeded", 1.5, 12.0)
    record_job(store, "create", "failed", 0.2, None)
    store.withdraw_host("h2")
    text = exposition(store)
    assert 'domsnap_jobs_total{op="create",outcome="succeeded"} 1.0' in text
    assert 'domsnap_jobs_total{op="create",outcome="failed"} 1.0' in text
    assert 'domsnap_pause_seconds_bucket{le="0.025"} 1.0' in text
    assert 'domsnap_pause_seconds_bucket{le="0.01"} 0.0' in text
    assert 'domsnap_job_duration_seconds_count 2.0' in text
    assert ('domsnap_policy_domain_last_success_timestamp_seconds{domain="' + U1
            + '",domain_name="web1",policy="nightly"} 1000.0') in text
    assert ('domsnap_snapshot_bytes{domain="' + U1 + '",domain_name="web1",host="h1"} 4096.0'
            ) in text
    assert 'domsnap_policy_period_seconds{policy="nightly"} 60.0' in text
    assert 'domsnap_host_up{host="h1"} 1.0' in text and 'domsnap_host_up{host="h2"} 0.0' in text


def test_scheduler_entry_keeps_zone_and_skip(pst: PolicyStore) -> None:
    from tasks.schedule import PolicyEntry, ZonedCrontab, entry_for

    pol = pst.create(body(missed="skip"))
    entry = entry_for(pol)
    assert isinstance(entry.schedule, ZonedCrontab) and entry.schedule.zone == "Europe/Berlin"
    assert entry.options["queue"] == "domsnap.schedule"
    import json

    from redbeat.decoder import RedBeatJSONEncoder

    raw = json.dumps({"name": entry.name, "task": entry.task, "args": entry.args,
                      "kwargs": entry.kwargs, "options": entry.options,
                      "schedule": entry.schedule, "enabled": True}, cls=RedBeatJSONEncoder)
    back = PolicyEntry.decode_definition(raw)
    assert isinstance(back["schedule"], ZonedCrontab)
    assert back["schedule"].zone == "Europe/Berlin" and back["kwargs"]["timing"]["missed"] == \
        "skip"
    # 03:00 Berlin is 01:00 UTC in summer, 02:00 in winter
    summer = dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC)
    for day, utc_hour in ((summer, 1), (dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC), 2)):
        last, delta, _ = back["schedule"].remaining_delta(day)
        assert (last + delta).astimezone(dt.UTC).hour == utc_hour


@pytest.mark.parametrize(("missed", "fires"), [("skip", False), ("run-once", True)])
def test_a_run_missed_during_downtime_is_skipped_or_run_once(
        pst: PolicyStore, missed: str, fires: bool) -> None:
    """The beat was away for ten periods: `skip` moves the entry on without firing (its
    next run is a full period away), `run-once` fires once."""
    from tasks.schedule import PolicyEntry, app, entry_for

    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    old = getattr(app, "redbeat_redis", None)
    app.redbeat_redis = fake  # redbeat's connection slot on the app
    try:
        pol = pst.create(body(cron=None, interval_s=60, missed=missed))
        entry = entry_for(pol)
        entry.save()
        entry.last_run_at = app.now() - dt.timedelta(seconds=600)
        due, next_s = entry.is_due()
        assert due is fires
        if not fires:
            again = PolicyEntry.from_key(entry.key, app=app)
            assert (app.now() - again.last_run_at).total_seconds() < 5  # moved to now
            assert 50 < next_s <= 60
    finally:
        app.redbeat_redis = old


def test_celery_task_events_are_on_for_flower() -> None:
    from workers.app import make_app

    conf = make_app().conf
    assert conf.worker_send_task_events is True and conf.task_send_sent_event is True


def test_exported_policy_schema_accepts_a_policy_and_refuses_a_bad_one() -> None:
    import json

    import jsonschema

    from schemas import export

    schema = json.loads((export.OUT_DIR / "policy.schema.json").read_text())
    good = Policy.model_validate(body()).model_dump(mode="json")
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "max_per_host": 0}, schema)
