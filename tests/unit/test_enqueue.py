"""domsnap/enqueue.py writes the envelope Celery's send_task writes through kombu's
Redis transport, for each entry task: compared key by key with a message Celery put
on a (fake) Redis, so a Celery or kombu upgrade that changes the wire fails here."""

from __future__ import annotations

import base64
import json
import uuid as uuidlib
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domsnap import enqueue
from domsnap.client import Client
from domsnap.settings import Settings
from workers.routing import ENTRY_TASKS, host_queue

# values not part of the contract: random per message, or display only (argsrepr:
# Celery's saferepr elides nesting past a depth; importing it costs a third of a
# second, and nothing reads it but logs and Flower)
_RANDOM = {("headers", "origin"), ("properties", "reply_to"), ("properties", "delivery_tag"),
           ("headers", "argsrepr")}


def _celery_message(task: str, task_id: str, args: list[Any], queue: str) -> dict[str, Any]:
    from workers.app import make_app

    server = fakeredis.FakeServer()
    app = make_app(Settings(redis_url="redis://fake:6379/0", result_backend_url="disabled://"))
    app.conf.broker_transport = "workers.intake:RedisTransport"

    import kombu.transport.redis as kr

    real = kr.Channel._create_client

    def fake_client(self: Any, asynchronous: bool = False) -> Any:
        return fakeredis.FakeRedis(server=server)

    kr.Channel._create_client = fake_client  # type: ignore[method-assign]
    try:
        app.send_task(task, args=args, queue=queue, task_id=task_id)
    finally:
        kr.Channel._create_client = real  # type: ignore[method-assign]
    raw = fakeredis.FakeRedis(server=server).lrange(queue, 0, -1)
    assert len(raw) == 1
    return json.loads(raw[0])  # type: ignore[no-any-return]


def _comparable(msg: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(msg))
    out["body"] = json.loads(base64.b64decode(out["body"]))
    for section, key in _RANDOM:
        out[section][key] = "*"
    return out  # type: ignore[no-any-return]


@pytest.mark.parametrize("op", sorted(ENTRY_TASKS))
def test_the_envelope_is_celerys(op: str) -> None:
    task, queue, task_id = ENTRY_TASKS[op], host_queue("h1"), str(uuidlib.uuid4())  # type: ignore[index]
    args = [{"job_id": task_id, "name": "s1", "disks": [{"vdev": "xvda"}], "n": 3}]
    ours = enqueue.envelope(task, task_id, args, queue)
    theirs = _celery_message(task, task_id, args, queue)
    assert _comparable(ours) == _comparable(theirs)
    assert set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    assert ours["headers"]["argsrepr"].startswith("[{'job_id': ")


@settings(max_examples=50, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c,
                                                                        max_size=3),
                    max_leaves=10))
def test_any_json_arguments_survive_the_envelope(value: Any) -> None:
    msg = json.loads(json.dumps(enqueue.envelope("domsnap.create", "j", [value], "q")))
    assert json.loads(base64.b64decode(msg["body"]))[0] == [value]


def test_only_plain_redis_brokers_are_written_directly() -> None:
    assert enqueue.direct_ok("redis://127.0.0.1:6379/0")
    assert enqueue.direct_ok("redis://:pw@h:1/2")
    for url in ("amqp://guest:guest@127.0.0.1//", "rediss://h:6380/0",
                "redis+socket:///run/redis.sock", "sentinel://h:26379"):
        assert not enqueue.direct_ok(url), url


def test_the_client_sends_through_celery_when_told_or_on_another_broker() -> None:
    assert Client(Settings(redis_url="redis://127.0.0.1:6379/0"))._direct is not None
    assert Client(Settings(redis_url="redis://127.0.0.1:6379/0", enqueue="celery"))._direct is None
    assert Client(Settings(redis_url="redis://127.0.0.1:6379/0",
                           broker_url="amqp://guest:guest@127.0.0.1//"))._direct is None
