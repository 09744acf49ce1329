"""Bad messages on a real queue, to a real worker (issue 7): none stops the worker or
comes back after a restart; a rejected body changes no job but its own never-admitted
one; an internal step sent from outside does nothing; a journal recovery cannot handle
does not keep the worker from starting; and a hypothesis sample of bad request bodies
through the queue, each refused naming its field with nothing changed.

One worker of its own (it is stopped and restarted here) and one shut-off domain, so
creates are the offline chord: entry task, per-disk steps, finish on the in-flight queue.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import pytest
from hypothesis import HealthCheck, given, settings

from domsnap.errors import InvalidInput, from_dict
from schemas.models import JobRecord
from tests.integration.cluster import REDIS_URL, Cluster, Domain, HostHandle, succeeded
from tests.unit.test_bad_input import assert_names_field, bad_bodies
from workers.app import make_app
from workers.routing import (
    ENTRY_TASKS,
    TASK_CREATE,
    TASK_DISK,
    TASK_LIVE,
    host_queue,
    inflight_queue,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]


@pytest.fixture(scope="module")
def host(cluster: Cluster) -> Iterator[HostHandle]:
    h = cluster.start_worker(f"bm-{cluster.suffix}", concurrency=1, inflight=1)
    try:
        yield h
    finally:
        cluster.stop_worker(h.name)


@pytest.fixture(scope="module")
def dom(cluster: Cluster, host: HostHandle) -> Domain:
    d = cluster.create_domain(host.name, f"bm-{cluster.suffix}", guest=False, disks=1,
                              start=False)
    cluster.wait_inventory(d)
    succeeded(cluster.client(), cluster.client().create(d.name, name="base", disk_only=True))
    settle(cluster, host)
    return d


def log_of(h: HostHandle) -> str:
    assert h.log is not None
    return h.log.read_text(errors="replace")


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def records(cluster: Cluster) -> dict[str, Any]:
    """Every domsnap record in Redis but the heartbeat's own (inventory, liveness)."""
    out = {}
    for key in cluster.redis.scan_iter(f"{cluster.prefix}:*", count=1000):
        if ":host:" in key:
            continue
        kind = cluster.redis.type(key)
        out[key] = (cluster.redis.get(key) if kind == "string" else
                    cluster.redis.hgetall(key) if kind == "hash" else
                    cluster.redis.lrange(key, 0, -1) if kind == "list" else
                    sorted(cluster.redis.smembers(key)) if kind == "set" else kind)
    return out


def files(h: HostHandle) -> set[str]:
    return {str(p) for p in h.root.rglob("*") if p.is_file() and ".log" not in p.name
            and "locks" not in p.parts}


def settle(cluster: Cluster, h: HostHandle) -> None:
    """Wait until the worker is done with the jobs it ended. A waiter hears of a job's
    end at the final write of its record (the notify); the worker then counts it in the
    metrics and drops its journal (the last thing it does, so a death in between leaves
    a trace), and the step's late ack follows. A "nothing changed" check that starts
    before those would see them, and a stop before the ack hands the (good, idempotent)
    message back."""
    journal = h.state_dir / "journal"
    wait_until(lambda: not list(journal.glob("*.json")) and queued_for(cluster, h) == [],
               "the ended jobs' journals gone and their messages acked")


def state_of(cluster: Cluster, h: HostHandle) -> tuple[dict[str, Any], set[str]]:
    """What a "nothing changed" check compares, taken once the host has settled."""
    settle(cluster, h)
    return records(cluster), files(h)


def queued_for(cluster: Cluster, h: HostHandle) -> list[str]:
    """Messages still on the host's queues, or unacked from them."""
    left = [m for q in (host_queue(h.name), inflight_queue(h.name))
            for m in cluster.redis.lrange(q, 0, -1)]
    for raw in cluster.redis.hvals("unacked"):
        if h.name in raw:
            left.append(raw)
    return left


def _publish(queue: str, body: Any, **kw: Any) -> None:
    with kombu.Connection(REDIS_URL) as conn:
        conn.Producer().publish(body, routing_key=queue, exchange="", **kw)


def _envelope(h: HostHandle, body: str, **over: Any) -> str:
    env: dict[str, Any] = {
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"task": TASK_CREATE, "id": str(uuidlib.uuid4())},
        "properties": {"delivery_tag": str(uuidlib.uuid4()), "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": host_queue(h.name)},
                       "priority": 0}}
    env.update(over)
    return json.dumps(env)


def _bad_messages(cluster: Cluster, h: HostHandle, dom: Domain) -> list[Callable[[], None]]:
    q = host_queue(h.name)
    ok_body = {"job_id": str(uuidlib.uuid4()), "domain": dom.uuid, "host": h.name, "name": "x"}

    def celery(args: Any, headers: Any = "default", ctype: str = "application/json",
               enc: str = "utf-8", raw: bytes | None = None) -> Callable[[], None]:
        hdrs = {"task": TASK_CREATE, "id": str(uuidlib.uuid4())} if headers == "default" \
            else headers
        payload = raw if raw is not None else json.dumps(args).encode()
        return lambda: _publish(q, payload, content_type=ctype, content_encoding=enc,
                                headers=hdrs)

    def lpush(raw: str) -> Callable[[], None]:
        return lambda: cluster.redis.lpush(q, raw)

    return [
        celery([1, 2]),                                # a JSON list that is no task body
        celery("a string"),
        celery(None, raw=b"\xff\xfe not json"),        # not JSON at all
        celery(None, raw=b"{not json"),
        celery([[ok_body], {}, {}], ctype="application/x-python-serialize", enc="binary"),
        celery([[ok_body], {}, {}], headers=None),     # no headers
        celery([[ok_body], {}, {}], headers={"task": ["domsnap.create"], "id": "x"}),
        celery([[ok_body], {}, {}], headers={"task": "domsnap.nosuch", "id": "x"}),
        celery([[ok_body, 1, 2], {"x": 1}, {}]),      # does not bind to create_entry(body)
        celery([["not an object"], {}, {}]),
        celery([[ok_body], {}, {"callbacks": [{"task": TASK_DISK, "args": [], "kwargs": {},
                                              "options": {"queue": inflight_queue(h.name)}}]}]),
        lpush("garbage{"),                             # the envelope itself is not JSON
        lpush("[1, 2, 3]"),
        lpush(_envelope(h, "!!!not base64")),
        lpush(_envelope(h, base64.b64encode(b"[[{}], {}, {}]").decode(), properties=[])),
        lpush(_envelope(h, base64.b64encode(b"[[{}], {}, {}]").decode(), headers="odd")),
        lpush(_envelope(h, "", properties={"delivery_tag": ["x"], "delivery_info": {}})),
        lpush(_envelope(h, "", properties={"delivery_tag": "t", "body_encoding": "base64",
                                           "delivery_info": {"exchange": ["x"]}})),
    ]


def test_no_message_stops_the_worker_or_comes_back(cluster: Cluster, host: HostHandle,
                                                   dom: Domain) -> None:
    """issue 7: one message that was not a JSON object killed the worker, and was put
    back at shutdown, so the worker died again at every restart."""
    before = state_of(cluster, host)
    for send in _bad_messages(cluster, host, dom):
        seen = log_of(host).count("rejected message")
        send()
        wait_until(lambda n=seen: log_of(host).count("rejected message") > n, "a rejection")
        assert host.proc is not None and host.proc.poll() is None, log_of(host)[-3000:]
    assert (records(cluster), files(host)) == before
    assert queued_for(cluster, host) == []
    assert "Traceback" not in log_of(host), log_of(host)[-3000:]
    # the worker still works, and after a restart nothing comes back
    succeeded(cluster.client(), cluster.client().create(dom.name, name="after-bad",
                                                         disk_only=True))
    settle(cluster, host)
    cluster.stop_worker(host.name)
    assert queued_for(cluster, host) == []
    rejected = log_of(host).count("rejected message")
    cluster.start_worker(host.name, concurrency=1, inflight=1)
    succeeded(cluster.client(), cluster.client().delete(dom.name, "after-bad"))
    assert log_of(host).count("rejected message") == rejected


def _send_entry(h: HostHandle, cluster: Cluster, body: Any, *, op: str = "create",
                task_id: str | None = None) -> str:
    task_id = task_id or str(uuidlib.uuid4())
    make_app(cluster.settings()).send_task(ENTRY_TASKS[op], args=[body],
                                           queue=host_queue(h.name), task_id=task_id)
    return task_id


def _handled(cluster: Cluster, h: HostHandle, task_id: str, timeout: float = 60) -> Any:
    """The entry task's result, or None once the intake logged rejecting the message."""
    res = make_app(cluster.settings()).AsyncResult(task_id)
    wait_until(lambda: res.ready() or f"id '{task_id}'" in log_of(h), f"task {task_id}",
               timeout)
    return res.result if res.ready() else None


def _job(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    raw = cluster.redis.get(f"{cluster.prefix}:job:{{{job_id}}}")
    return json.loads(raw) if raw else None


def test_a_rejected_body_changes_no_job_but_its_own(cluster: Cluster, host: HostHandle,
                                                    dom: Domain) -> None:
    """issue 7: a malformed body carrying a finished job's id rewrote that job to failed;
    an upper-case job_id split one job into two records."""
    client = cluster.client()
    done = succeeded(client, client.create(dom.name, name="finished", disk_only=True))
    finished = _job(cluster, done.job_id)
    bad = {"job_id": done.job_id, "domain": dom.uuid, "host": host.name, "name": "finished",
           "description": "d" * 5000}
    seen = log_of(host).count(f"rejected request '{done.job_id}': description: ")
    _send_entry(host, cluster, bad, task_id=done.job_id)
    wait_until(lambda: log_of(host).count(f"rejected request '{done.job_id}': description: ")
               > seen, "the body's rejection")
    assert _job(cluster, done.job_id) == finished

    # a queued job of another host, and one of another domain, named by a bad body
    for other in ({"host": "elsewhere"}, {"domain": str(uuidlib.uuid4())}):
        jid = str(uuidlib.uuid4())
        rec = JobRecord(job_id=jid, op="create", domain=other.get("domain", dom.uuid),
                        host=other.get("host", host.name), name="q", submitted_at=time.time())
        client.store.create_job(rec)
        body = {**bad, "job_id": jid, "name": "q", "host": host.name, "domain": dom.uuid}
        _handled(cluster, host, _send_entry(host, cluster, body, task_id=jid))
        assert _job(cluster, jid) == json.loads(rec.model_dump_json())

    # an upper-case job id: refused, and no record under either spelling
    jid = str(uuidlib.uuid4()).replace("0", "a")
    body = {"job_id": jid.upper(), "domain": dom.uuid, "host": host.name, "name": "upper"}
    out = _handled(cluster, host, _send_entry(host, cluster, body, task_id=jid.upper()))
    assert out["error"]["details"]["field"] == "job_id"
    assert _job(cluster, jid) is None and _job(cluster, jid.upper()) is None
    assert client.snapshots(dom.name) and "upper" not in {r.name for r in
                                                           client.snapshots(dom.name)}

    # its own never-admitted job (the submitter's record, same everything): failed, why
    jid = str(uuidlib.uuid4())
    client.store.create_job(JobRecord(job_id=jid, op="create", domain=dom.uuid,
                                      host=host.name, name="own", submitted_at=time.time()))
    body = {"job_id": jid, "domain": dom.uuid, "host": host.name, "name": "own",
            "disks": [{"vdev": "vda", "target": "/x/" + "t" * 300}]}
    _handled(cluster, host, _send_entry(host, cluster, body, task_id=jid))
    job = client.job(jid)
    assert job.state == "failed" and job.error is not None
    assert job.error.message.startswith("disks.0.target: path component")


def test_an_internal_step_from_outside_does_nothing(cluster: Cluster, host: HostHandle,
                                                    dom: Domain) -> None:
    """issue 7: a per-disk step sent to the public queue ran without planning and made an
    overlay outside every snapshot root. Now it is turned away at the intake, and one
    on the in-flight queue that no admitted job journaled is refused by the step."""
    client = cluster.client()
    outside = host.root / "outside-roots"
    outside.mkdir(exist_ok=True)
    target = outside / "evil.qcow2"
    body = {"job_id": str(uuidlib.uuid4()), "domain": dom.uuid, "host": host.name,
            "name": "evil", "disk_only": True}
    vdev, image = next(iter(dom.disks.items()))
    disk = {"vdev": vdev, "path": str(image), "format": "qcow2",
            "type": "external", "backend": None, "strategy": "qemu-img", "target": str(target)}
    done = succeeded(client, client.create(dom.name, name="real", disk_only=True))
    before = state_of(cluster, host)
    app = make_app(cluster.settings())
    seen = log_of(host).count("internal step")
    app.send_task(TASK_DISK, args=[body, disk], queue=host_queue(host.name))
    wait_until(lambda: log_of(host).count("internal step") > seen, "the intake's rejection")

    # on the in-flight queue: no admitted job of that id, so the step refuses
    seen = log_of(host).count("refused step")
    res = app.send_task(TASK_DISK, args=[body, disk], queue=inflight_queue(host.name))
    assert res.get(timeout=60)["ok"] is False
    # a finished job's id with a plan of its own making: refused too
    forged = {"job_id": done.job_id, "domain": dom.uuid, "host": host.name, "name": "real",
              "disk_only": True}
    plan = {"mode": "live", "memory_file": str(outside / "m.save"), "domain_state": "running",
            "config": {}, "disks": [disk]}
    assert app.send_task(TASK_LIVE, args=[forged, plan],
                         queue=inflight_queue(host.name)).get(timeout=60) == {"refused": True}
    assert log_of(host).count("refused step") >= seen + 2
    assert not target.exists() and not (outside / "m.save").exists()
    assert (records(cluster), files(host)) == before
    succeeded(client, client.delete(dom.name, "real"))


def test_a_memory_file_name_too_long_is_refused_up_front(cluster: Cluster, host: HostHandle,
                                                         dom: Domain) -> None:
    before = state_of(cluster, host)
    with pytest.raises(InvalidInput) as info:
        cluster.client().create(dom.name, name="long", memory_file=str(
            host.snapshots / ("m" * 300)))
    assert info.value.field == "memory_file"
    assert (records(cluster), files(host)) == before


def test_recovery_survives_a_journal_it_cannot_handle(cluster: Cluster, host: HostHandle,
                                                      dom: Domain) -> None:
    """issue 7: `OSError: File name too long` escaped recovery (it caught only domsnap
    errors) and `domsnap worker` could no longer start. A journal that cannot be
    recovered is logged and left; the others are recovered; the worker starts."""
    client = cluster.client()
    cluster.stop_worker(host.name)
    jdir = host.state_dir / "journal"
    jdir.mkdir(parents=True, exist_ok=True)
    bad_ids = ["00000000-0000-4000-8000-" + uuidlib.uuid4().hex[:12] for _ in range(2)]
    good_id = "ffffffff-ffff-4fff-8fff-" + uuidlib.uuid4().hex[:12]
    (host.snapshots / dom.uuid).mkdir(parents=True, exist_ok=True)
    for jid, mem in ((bad_ids[0], str(host.snapshots / dom.uuid)),  # unlink: a directory
                     (bad_ids[1], str(host.snapshots / dom.uuid / ("m" * 300))),
                     (good_id, None)):
        req = {"op": "create", "job_id": jid, "domain": dom.uuid, "host": host.name,
               "name": f"j{jid[-6:]}", "disk_only": mem is None, "memory_file": mem}
        client.store.create_job(JobRecord(job_id=jid, op="create", domain=dom.uuid,
                                          host=host.name, name=req["name"], state="running",
                                          submitted_at=time.time()))
        (jdir / f"{jid}.json").write_text(json.dumps({
            "request": req, "step": "capture",
            "plan": {"mode": "offline", "memory_file": mem, "domain_state": "shutoff",
                     "config": dom.config(), "disks": []}}))
    try:
        cluster.start_worker(host.name, concurrency=1, inflight=1)
        for jid in bad_ids:
            assert f"could not recover job {jid}" in log_of(host)
            # failed with the reason, its lock and name released, its journal set aside
            bad = client.job(jid)
            assert bad.state == "failed" and bad.error is not None
            assert "recovering it failed" in bad.error.message
            assert (jdir / "failed" / f"{jid}.json").exists()
            assert not (jdir / f"{jid}.json").exists()
        assert client.job(good_id).state == "failed"
        succeeded(client, client.create(dom.name, name="after-recovery", disk_only=True))
    finally:
        for jid in bad_ids:
            (jdir / f"{jid}.json").unlink(missing_ok=True)
            (jdir / "failed" / f"{jid}.json").unlink(missing_ok=True)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(case=bad_bodies(host="HOST", domain="00000000-0000-4000-8000-000000000000"))
def test_generated_bad_bodies_through_the_real_queue(cluster: Cluster, host: HostHandle,
                                                     dom: Domain,
                                                     case: tuple[str, Any, str]) -> None:
    op, body, field = case
    if isinstance(body, dict):  # the strategy's placeholders: this host and domain
        body = {k: (host.name if v == "HOST" else dom.uuid
                    if v == "00000000-0000-4000-8000-000000000000" else v)
                for k, v in body.items()}
    before = state_of(cluster, host)
    out = _handled(cluster, host, _send_entry(host, cluster, body, op=op))
    assert host.proc is not None and host.proc.poll() is None
    if out is not None:  # the task ran: refused at validation, the error names the field
        assert out["admitted"] is False
        assert_names_field(from_dict(out["error"]), field)
    else:  # turned away at the intake: only a body that is no JSON object is
        assert field == "body"
    assert (records(cluster), files(host)) == before


def test_real_cli_refuses_bad_arguments(host: HostHandle, dom: Domain) -> None:
    """A few of tests/unit/test_bad_input_cli.py's cases through the real `domsnap`."""
    for args, code, text in (
            (["snapshot-create", "-n", "", dom.name], 2, "empty snapshot name"),
            (["snapshot-revert", "-n", "base", "--running", "--paused", dom.name], 2,
             "--running and --paused"),
            (["snapshot-delete", "-n", "nosuch", dom.name], 3,
             f"no snapshot 'nosuch' on domain {dom.name}"),
            (["job", "not-a-job"], 2, "is not a job id")):
        res = host.cli(*args)
        assert isinstance(res, subprocess.CompletedProcess)
        assert res.returncode == code, (args, res.stdout, res.stderr)
        assert text in res.stderr and "Traceback" not in res.stderr, res.stderr
        last = res.stderr.strip().splitlines()[-1]  # click puts its usage hint first
        assert last.startswith(("domsnap: error: ", "Error: ")) and text in last, res.stderr


def test_real_cli_job_wait_exits_with_a_failed_jobs_code(cluster: Cluster, host: HostHandle,
                                                         dom: Domain) -> None:
    job_id = cluster.client().create(dom.name, name="nomem")  # shut off: no memory to save
    res = host.cli("job", "--wait", job_id)
    assert res.returncode == 2, (res.stdout, res.stderr)  # InvalidInput's code
    assert "failed" in res.stdout and "--disk-only" in res.stdout

