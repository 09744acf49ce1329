"""Where broker messages enter a worker: the one boundary that turns away whatever is
not a well-formed domsnap task message for this host, before Celery or a task sees it.

A message that fails here is **rejected without requeue** (on Redis: acknowledged and
dropped; on RabbitMQ: dropped, or dead-lettered if the operator gave the queue a
dead-letter exchange) and logged as one line on the ``domsnap.intake`` logger:
``rejected message on QUEUE (task T, id I): REASON``. It is never put back on the
queue, so one bad message cannot stop a worker or come back at every restart.

Two layers, because a message can be broken at two depths:

- :class:`RedisTransport` (Redis brokers only): the transport's envelope (the JSON
  object kombu keeps in the Redis list: ``body``, ``headers``, ``properties``...).
  Garbage there (not JSON, not an object, a body that is not valid base64) used to
  escape from kombu's event loop and kill the worker. It also stamps each message
  with the queue it really came from (``delivery_info['routing_key']``), since on
  Redis the publisher writes that field itself.
- :class:`SafeConsumer`: the Celery task message (protocol 2): JSON content type, a
  ``task`` and ``id`` header, a body ``[args, kwargs, embed]`` whose args and kwargs
  bind to the task's signature with JSON objects/arrays where it takes them,
  continuation tasks (``domsnap.step.*``) only from the host's in-flight queue, and
  no callbacks/errbacks/chains/chords attached to a message on the public queue.
  Anything that still fails inside Celery's own handler is rejected the same way.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
from typing import Any, get_origin, get_type_hints

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis

from workers.routing import (
    SCHEDULE_QUEUE,
    TASK_POLICY_RUN,
    host_queue,
    inflight_queue,
    is_internal,
)

log = logging.getLogger("domsnap.intake")

MAX_BODY_BYTES = 4 << 20  # a request is a few KB; a plan with many disks a few tens
_EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


class BadMessage(Exception):
    """Why a message is turned away (one line, for the log)."""


def _excerpt(data: object, limit: int = 120) -> str:
    text = data if isinstance(data, str) else repr(data)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


# ---------------------------------------------------------------- transport envelope


def check_envelope(raw: object) -> None:
    """The Redis transport's envelope of one message, before kombu builds a Message."""
    if not isinstance(raw, dict):
        raise BadMessage(f"envelope is a JSON {type(raw).__name__}, not an object")
    props = raw.get("properties")
    if not isinstance(props, dict):
        raise BadMessage("envelope has no 'properties' object")
    info = props.get("delivery_info")
    if not isinstance(info, dict):
        raise BadMessage("envelope has no 'properties.delivery_info' object")
    if not isinstance(info.get("exchange", ""), str):
        raise BadMessage("'properties.delivery_info.exchange' is not a string")
    if not isinstance(props.get("delivery_tag"), str | int) or isinstance(
            props.get("delivery_tag"), bool):
        raise BadMessage("envelope has no 'properties.delivery_tag'")
    headers = raw.get("headers")
    if headers is not None and not isinstance(headers, dict):
        raise BadMessage(f"headers are a JSON {type(headers).__name__}, not an object")
    for key in ("content-type", "content-encoding"):
        if raw.get(key) is not None and not isinstance(raw.get(key), str):
            raise BadMessage(f"{key} is not a string")
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        raise BadMessage(f"body is a JSON {type(body).__name__}, not a string")
    encoding = props.get("body_encoding")
    if body and encoding == "base64":
        try:
            base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise BadMessage(f"body is not valid base64: {exc}") from None
    elif encoding not in (None, "base64"):
        raise BadMessage(f"unknown body_encoding {_excerpt(encoding)}")


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, with the envelope checked before a Message is built."""

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        ret = super().basic_consume(queue, *args, **kwargs)  # type: ignore[no-untyped-call]
        inner = self.connection._callbacks[queue]

        def on_raw(raw: Any) -> Any:
            try:
                check_envelope(raw)
            except BadMessage as exc:
                # BRPOP took it off the list and it never reached the unacked set:
                # not acting on it drops it for good.
                log.error("rejected message on %s: %s: %s", queue, exc, _excerpt(raw))
                return None
            info = raw["properties"]["delivery_info"]
            info["routing_key"] = queue  # where it really came from (the publisher wrote it)
            info.setdefault("exchange", "")
            try:
                return inner(raw)
            except Exception as exc:  # noqa: BLE001 - no message may stop the worker
                log.exception("rejected message on %s: %s: %s", queue, type(exc).__name__, exc)
                return None

        self.connection._callbacks[queue] = on_raw
        return ret

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except ValueError as exc:  # json/Unicode decoding of the envelope
            raw = getattr(exc, "doc", None) or getattr(exc, "object", None) or ""
            log.error("rejected message (envelope is not JSON: %s): %s", exc, _excerpt(raw))
            return True


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


# ---------------------------------------------------------------- task message


def _bind(task: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """``args``/``kwargs`` fit the task's signature, JSON objects and arrays where the
    signature takes ``dict``/``list``."""
    fn = task.run
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise BadMessage(f"arguments do not fit {task.name}: {exc}") from None
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001 - no usable annotations: the binding is the check
        hints = {}
    for name, value in bound.arguments.items():
        want = get_origin(hints.get(name)) or hints.get(name)
        if want in (dict, list) and not isinstance(value, want):
            raise BadMessage(f"argument {name} of {task.name} must be a JSON "
                             f"{'object' if want is dict else 'array'}, not "
                             f"{type(value).__name__}")


def check_task_message(app: Any, host: str, headers: Any, content_type: Any,
                       content_encoding: Any, body: Any, routing_key: Any,
                       schedule_queue: str = SCHEDULE_QUEUE) -> None:
    """A Celery protocol-2 task message fit for this host's worker, or BadMessage. The
    scheduler's queue carries policy runs and nothing else; a policy run comes from no
    other queue."""
    if not isinstance(headers, dict):
        raise BadMessage("no headers (not a Celery task message)")
    task_name, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task_name, str) or not task_name:
        raise BadMessage("header 'task' is missing or not a string")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
        raise BadMessage("header 'id' is missing or not a string of 1-255 characters")
    if not task_name.startswith("domsnap.") or task_name not in app.tasks:
        raise BadMessage(f"unknown task {_excerpt(task_name)}")
    if (task_name == TASK_POLICY_RUN) != (routing_key == schedule_queue):
        raise BadMessage(f"{task_name} came from {_excerpt(routing_key)}: only "
                         f"{TASK_POLICY_RUN} runs from the scheduler's queue {schedule_queue}, "
                         "and only from there")
    queues = {host_queue(host), inflight_queue(host), schedule_queue}
    if not isinstance(routing_key, str) or routing_key not in queues:
        raise BadMessage(f"came from {_excerpt(routing_key)}, not a queue of host {host}")
    if is_internal(task_name) and routing_key != inflight_queue(host):
        raise BadMessage(f"{task_name} is an internal step: it runs only from the in-flight "
                         f"queue {inflight_queue(host)}, never from {routing_key}")
    if content_type != "application/json":
        raise BadMessage(f"content type {_excerpt(content_type)}: only application/json")
    if content_encoding not in (None, "utf-8"):
        raise BadMessage(f"content encoding {_excerpt(content_encoding)}: only utf-8")
    if isinstance(body, bytes | bytearray | memoryview):
        if len(body) > MAX_BODY_BYTES:
            raise BadMessage(f"body is {len(body)} bytes: at most {MAX_BODY_BYTES}")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadMessage(f"body is not UTF-8: {exc}") from None
    elif isinstance(body, str):
        text = body
        if len(text) > MAX_BODY_BYTES:
            raise BadMessage(f"body is {len(text)} characters: at most {MAX_BODY_BYTES}")
    else:
        raise BadMessage(f"body is a {type(body).__name__}")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise BadMessage(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadMessage("body is not JSON: nested too deeply") from None
    if not (isinstance(payload, list) and len(payload) == 3):
        raise BadMessage("body is not a Celery [args, kwargs, embed] array")
    args, kwargs, embed = payload
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(
            embed, dict | type(None)):
        raise BadMessage("body is not a Celery [args, kwargs, embed] array")
    embed = embed or {}
    extra = set(embed) - _EMBED_KEYS
    if extra:
        raise BadMessage(f"unknown keys in the body's options: {sorted(extra)[:5]}")
    if not is_internal(task_name) and any(embed.get(k) for k in _EMBED_KEYS):
        raise BadMessage("a request from outside carries callbacks, errbacks, a chain or "
                         "a chord: refused (they could start internal steps)")
    _bind(app.tasks[task_name], args, kwargs)


class SafeConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer with :func:`check_task_message` in front of its handler."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        inner = super().create_task_handler(*args, **kwargs)
        from domsnap.settings import get_settings

        host = get_settings().host
        schedule_queue = get_settings().schedule_queue

        def on_task_received(message: Any) -> Any:
            info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
            queue = info.get("routing_key")
            headers = message.headers if isinstance(message.headers, dict) else {}
            what = (f"on {queue} (task {_excerpt(headers.get('task'), 60)}, "
                    f"id {_excerpt(headers.get('id'), 60)})")
            try:
                check_task_message(self.app, host, message.headers, message.content_type,
                                   message.content_encoding, message.body, queue,
                                   schedule_queue)
            except BadMessage as exc:
                log.error("rejected message %s: %s", what, exc)
                self._drop(message)
                return None
            try:
                return inner(message)
            except Exception as exc:  # noqa: BLE001 - no message may stop the worker
                log.exception("rejected message %s: %s: %s", what, type(exc).__name__, exc)
                self._drop(message)
                return None

        return on_task_received

    def _drop(self, message: Any) -> None:
        if not message.acknowledged:
            message.reject_log_error(log, self.connection_errors, requeue=False)
