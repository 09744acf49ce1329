"""Redis ACL rules for the three kinds of domsnap clients (docs/acl.md shows them for
the default prefix; tests/integration/test_acl.py proves each user can do its part
and nothing more, on a real Redis).

- ``reader``: read-only: snapshot records (and their summaries and by-time index),
  current pointers, job records and events, inventory, the audit stream. Writes nothing.
- ``submitter``: a control plane. Reads what the reader reads; creates job records
  (and their cancel flags), claims snapshot names and request ids, appends to the
  audit stream, and enqueues onto host queues. Cannot write snapshot records (nor their
  summaries and by-time index), the ``current`` pointer, locks, the inventory or the
  index.
- ``worker``: a host's ``domsnap worker``: every domsnap key and Celery's broker and
  result keys; no dangerous commands (FLUSHALL, CONFIG, KEYS, DEBUG, ...).

Key permissions (``%R~``/``%W~``, Redis 7) also bind the commands a Lua script runs,
so the submitter's name claim (a script that reads ``:snapshots`` and writes
``:reserved``) works while a write to ``:snapshots`` fails in a script as outside one.
"""

from __future__ import annotations

# Commands every client needs to connect (HELLO for RESP3; redis-py's CLIENT SETINFO,
# Redis 7.2+, may be refused: redis-py ignores that) and to run domsnap's scripts.
_CONNECT = ["+ping", "+hello", "+client|setname", "+client|id", "+select", "+echo"]
_SCRIPTS = ["+evalsha", "+eval", "+script|load", "+script|exists"]
# Celery's result channels and the broker's bindings, as a producer uses them.
_CELERY_PRODUCER_KEYS = ["~_kombu.binding*", "~celery-task-meta-*"]


def acl_rules(prefix: str = "domsnap") -> dict[str, list[str]]:
    """ACL SETUSER rules (without ``on`` and the password) per user kind. ``prefix`` is
    DOMSNAP_KEY_PREFIX; queue names (``domsnap.host.<host>``) do not take it."""
    p = prefix
    reader = ["resetkeys", "resetchannels", "-@all", *_CONNECT, "+@read", "-@dangerous",
              f"%R~{p}:*",
              "+subscribe", "+unsubscribe", f"&{p}:job:*"]  # waiting on a job's notify
    submitter = [
        "resetkeys", "resetchannels", "-@all", *_CONNECT, *_SCRIPTS, "+@read", "-@dangerous",
        "+set", "+expire", "+hset", "+hdel", "+del", "+rpush", "+lpush", "+sadd",
        "+xadd", "+multi", "+exec", "+discard", "+watch", "+unwatch",
        "+subscribe", "+unsubscribe", "+psubscribe", "+punsubscribe", "+publish",
        f"%R~{p}:*",
        f"~{p}:job:*",  # job records, their events and cancel flags
        f"~{p}:dom:*:reserved",  # snapshot name claims
        f"~{p}:request:*",  # request id -> job id
        f"~{p}:audit",  # job-cancel's audit entries
        "~domsnap.host.*",  # host queues (LPUSH by the broker client)
        *_CELERY_PRODUCER_KEYS,
        "&celery-task-meta-*",
        f"&{p}:job:*",  # job notify channels: waiting, and a cancel's publish
    ]
    worker = ["resetkeys", "resetchannels", "+@all", "-@dangerous", "+info",
              "+client|setname", "+client|id",
              f"~{p}:*", "~domsnap.host.*", "~_kombu.*", "~unacked*", "~celery-task-*",
              "~celery-taskset-*", "~*.celery.pidbox*", "&*"]
    return {"reader": reader, "submitter": submitter, "worker": worker}


def setuser_command(user: str, password: str, rules: list[str]) -> list[str]:
    """The ``ACL SETUSER`` argv for ``user`` (for redis-cli or ``execute_command``)."""
    return ["ACL", "SETUSER", user, "reset", "on", f">{password}", *rules]
