"""The Redis store: snapshot records, job results and events, inventory, locks.

This module is the one boundary where redis-py errors become
:class:`~domsnap.errors.StoreUnavailable`. State changes that must be atomic
use Lua scripts or MULTI/EXEC on keys of one hash tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from domsnap.errors import (
    DomainLocked,
    HostUnavailable,
    InvalidInput,
    LockLost,
    SnapshotExists,
    StoreUnavailable,
    UnknownDomain,
    UnknownJob,
)
from domsnap.jobwatch import JobWatch
from domsnap.keys import Keys
from domsnap.snapindex import IndexReads
from domsnap.storebase import _load, _translated
from schemas.models import (
    AuditEntry,
    DomainInfo,
    HostInventory,
    JobEvent,
    JobRecord,
    SnapshotRecord,
)
from schemas.summary import summary_of


@dataclass(frozen=True)
class Fence:
    """What a lock holder presents to commit: its job and the token it was given."""

    job_id: str
    token: int


# KEYS: snapshots, reserved. ARGV: name, job_id
_RESERVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'exists' end
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if owner and owner ~= ARGV[2] then return 'reserved:' .. owner end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 'ok'
"""
# The same claim for submitters: KEYS: reserved. ARGV: name, job_id, snapshots key (same
# hash tag, so the same slot). Only ``reserved`` is declared, because EVAL needs
# read+write ACL permission on every declared key and a control plane's ACL user may
# only read the records (docs/acl.md); the inner HEXISTS is checked as a read.
_CLAIM = """
if redis.call('HEXISTS', ARGV[3], ARGV[1]) == 1 then return 'exists' end
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner and owner ~= ARGV[2] then return 'reserved:' .. owner end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
"""
# KEYS: lock, lock token, fence counter. ARGV: job_id, ttl
# Every acquisition (the same job again included: a recovery taking a job over)
# gets a new token, so an earlier holder of the same job is fenced off too.
_ACQUIRE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 'busy:' .. owner end
local token = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('SET', KEYS[2], token, 'EX', tonumber(ARGV[2]))
return 'ok:' .. token
"""
# KEYS: lock, lock token. ARGV: job_id, token, ttl
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""
# KEYS: lock, lock token. ARGV: job_id, token
_RELEASE_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""
# A fenced write of a domain's records: done only while the lock is the caller's.
# Every record write or delete also writes or deletes its summary and its place in the
# creation-time index (domsnap/snapindex.py), in this same script.
# KEYS: lock, lock token, snapshots, meta, reserved, summaries, by-time index.
# ARGV: job_id, token, name to delete or '', current ('keep' | 'del' | 'set:NAME'),
#       reserved name to drop or '', then name/json/summary/created_at quadruples.
_FENCED_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
if ARGV[3] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('HDEL', KEYS[6], ARGV[3])
  redis.call('ZREM', KEYS[7], ARGV[3])
end
local i = 6
while i < #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 2])
  redis.call('ZADD', KEYS[7], ARGV[i + 3], ARGV[i])
  i = i + 4
end
if ARGV[4] == 'del' then redis.call('HDEL', KEYS[4], 'current')
elseif string.sub(ARGV[4], 1, 4) == 'set:' then
  redis.call('HSET', KEYS[4], 'current', string.sub(ARGV[4], 5))
end
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[5], ARGV[5]) end
return 1
"""
# KEYS: key. ARGV: expected value
_DEL_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: hash. ARGV: field, expected value
_HDEL_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class Store(IndexReads):
    """Typed access to domsnap's Redis data (the snapshot index's reads and rebuild:
    :class:`~domsnap.snapindex.IndexReads`)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "domsnap", job_ttl_s: int = 604800):
        # redis-py types every reply as ``T | Awaitable[T]`` (sync and async share stubs);
        # this store is sync-only, so the client is used untyped here.
        self.r: Any = client
        self.keys = Keys(prefix)
        self.job_ttl_s = job_ttl_s
        self._reserve = client.register_script(_RESERVE)
        self._claim = client.register_script(_CLAIM)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release_fenced = client.register_script(_RELEASE_FENCED)
        self._fenced_write = client.register_script(_FENCED_WRITE)
        self._del_if = client.register_script(_DEL_IF)
        self._hdel_if = client.register_script(_HDEL_IF)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "domsnap", job_ttl_s: int = 604800) -> Store:
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10,
                                      socket_connect_timeout=5, health_check_interval=30)
        return cls(client, prefix=prefix, job_ttl_s=job_ttl_s)

    # ------------------------------------------------------------ snapshots

    @_translated
    def reserve_name(self, uuid: str, name: str, job_id: str) -> None:
        """Claim a snapshot name for a create; a redelivered create (same job) passes."""
        res = str(self._reserve(keys=[self.keys.snapshots(uuid), self.keys.reserved(uuid)],
                                args=[name, job_id]))
        self._name_claimed(res, uuid, name)

    @_translated
    def claim_name(self, uuid: str, name: str, job_id: str) -> None:
        """:meth:`reserve_name` for submitters (the client): same checks, atomically, but
        runs with an ACL user that cannot write snapshot records (docs/acl.md)."""
        res = str(self._claim(keys=[self.keys.reserved(uuid)],
                              args=[name, job_id, self.keys.snapshots(uuid)]))
        self._name_claimed(res, uuid, name)

    @staticmethod
    def _name_claimed(res: str, uuid: str, name: str) -> None:
        if res == "exists":
            raise SnapshotExists(f"snapshot {name!r} already exists", name=name, domain=uuid)
        if res.startswith("reserved:"):
            raise SnapshotExists(
                f"snapshot {name!r} is already being created by job {res[9:]}",
                name=name, domain=uuid, job_id=res[9:],
            )

    @_translated
    def release_name(self, uuid: str, name: str, job_id: str) -> None:
        self._hdel_if(keys=[self.keys.reserved(uuid)], args=[name, job_id])

    def _fenced(self, uuid: str, fence: Fence, *, delete: str = "", current: str = "keep",
                reserved: str = "", records: list[SnapshotRecord] | None = None) -> None:
        args: list[str] = [fence.job_id, str(fence.token), delete, current, reserved]
        for rec in records or []:
            args += [rec.name, rec.model_dump_json(), summary_of(rec).to_json(),
                     repr(rec.created_at)]
        k = self.keys
        ok = self._fenced_write(keys=[k.lock(uuid), k.lock_token(uuid), k.snapshots(uuid),
                                      k.meta(uuid), k.reserved(uuid), k.summaries(uuid),
                                      k.by_time(uuid)], args=args)
        if not ok:
            raise LockLost(f"job {fence.job_id} no longer holds the lock of domain {uuid} "
                           f"(token {fence.token}): its lease ran out or another attempt took "
                           "the job over; nothing was written", domain=uuid, job_id=fence.job_id)

    def _put_record(self, pipe: Any, uuid: str, rec: SnapshotRecord) -> None:
        """Queue a record's write with its summary and index entry (one MULTI/EXEC)."""
        pipe.hset(self.keys.snapshots(uuid), rec.name, rec.model_dump_json())
        pipe.hset(self.keys.summaries(uuid), rec.name, summary_of(rec).to_json())
        pipe.zadd(self.keys.by_time(uuid), {rec.name: rec.created_at})

    @staticmethod
    def _current_arg(current: str | None | bool) -> str:
        if current is None:
            return "del"
        return f"set:{current}" if isinstance(current, str) else "keep"

    @_translated
    def commit_snapshot(self, record: SnapshotRecord, *, job_id: str | None = None,
                        fence: Fence | None = None) -> None:
        """Make a snapshot visible and current, and drop its reservation, atomically;
        with ``fence``, only while the caller still holds the domain's lock."""
        uuid = record.domain
        if fence is not None:
            self._fenced(uuid, fence, current=f"set:{record.name}",
                         reserved=record.name if job_id else "", records=[record])
            return
        with self.r.pipeline(transaction=True) as pipe:
            self._put_record(pipe, uuid, record)
            pipe.hset(self.keys.meta(uuid), "current", record.name)
            if job_id:
                pipe.hdel(self.keys.reserved(uuid), record.name)
            pipe.execute()

    @_translated
    def put_snapshots(self, uuid: str, records: list[SnapshotRecord],
                      *, current: str | None | bool = False, fence: Fence | None = None) -> None:
        """Write several records (and optionally the current pointer) in one transaction;
        with ``fence``, only while the caller still holds the domain's lock."""
        if fence is not None:
            self._fenced(uuid, fence, current=self._current_arg(current), records=records)
            return
        with self.r.pipeline(transaction=True) as pipe:
            for rec in records:
                self._put_record(pipe, uuid, rec)
            if current is None:
                pipe.hdel(self.keys.meta(uuid), "current")
            elif isinstance(current, str):
                pipe.hset(self.keys.meta(uuid), "current", current)
            pipe.execute()

    @_translated
    def remove_snapshot(self, uuid: str, name: str, *, updated: list[SnapshotRecord],
                        current: str | None, fence: Fence | None = None) -> None:
        """Remove a record, rewrite the records it changed (parents), set current: atomically;
        with ``fence``, only while the caller still holds the domain's lock."""
        if fence is not None:
            self._fenced(uuid, fence, delete=name, current=self._current_arg(current),
                         records=updated)
            return
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.snapshots(uuid), name)
            pipe.hdel(self.keys.summaries(uuid), name)
            pipe.zrem(self.keys.by_time(uuid), name)
            for rec in updated:
                self._put_record(pipe, uuid, rec)
            if current is None:
                pipe.hdel(self.keys.meta(uuid), "current")
            else:
                pipe.hset(self.keys.meta(uuid), "current", current)
            pipe.execute()

    # ------------------------------------------------------------ locks

    @_translated
    def acquire_lock(self, uuid: str, job_id: str, ttl_s: int) -> int:
        """Take the domain's mutation lock, a lease of ``ttl_s`` that the holder renews
        (:meth:`renew_lock`); the same job may take it again (redelivery, recovery).
        Returns the fencing token: a number larger than every earlier holder's, which
        fenced commits must present. The job's own fence follows (:meth:`update_job`)."""
        k = self.keys
        res = str(self._acquire(keys=[k.lock(uuid), k.lock_token(uuid), k.fence(uuid)],
                                args=[job_id, ttl_s]))
        if res.startswith("busy:"):
            owner = res[5:]
            raise DomainLocked(
                f"domain {uuid} is busy: job {owner} is running a snapshot operation on it",
                domain=uuid, job_id=owner,
            )
        token = int(res[3:])
        self.r.set(k.job_fence(job_id), str(token), ex=self.job_ttl_s)
        return token

    @_translated
    def renew_lock(self, fence: Fence, uuid: str, ttl_s: int) -> bool:
        """Extend the lease; False if the caller no longer holds the lock."""
        return bool(self._renew(keys=[self.keys.lock(uuid), self.keys.lock_token(uuid)],
                                args=[fence.job_id, str(fence.token), ttl_s]))

    @_translated
    def release_lock(self, uuid: str, job_id: str, *, fence: Fence | None = None) -> bool:
        if fence is not None:
            return bool(self._release_fenced(
                keys=[self.keys.lock(uuid), self.keys.lock_token(uuid)],
                args=[fence.job_id, str(fence.token)]))
        return bool(self._del_if(keys=[self.keys.lock(uuid)], args=[job_id]))

    @_translated
    def lock_owner(self, uuid: str) -> str | None:
        value = self.r.get(self.keys.lock(uuid))
        return str(value) if value is not None else None

    # ------------------------------------------------------------ jobs

    @_translated
    def create_job(self, job: JobRecord) -> bool:
        """Store a new job; False if that job id exists already (idempotent submit)."""
        return bool(self.r.set(self.keys.job(job.job_id), job.model_dump_json(),
                               nx=True, ex=self.job_ttl_s))

    @_translated
    def get_job(self, job_id: str, *, follow: bool = False) -> JobRecord:
        """A job's record. ``follow``: a job that repeated another's request id
        (``duplicate_of``) is read as that job (what submitters want; workers never)."""
        raw = self.r.get(self.keys.job(job_id))
        if raw is None:
            raise UnknownJob(f"no job {job_id} (unknown, or its result expired)", job_id=job_id)
        job = _load(JobRecord, raw, f"job {job_id}")
        if follow and job.duplicate_of and job.duplicate_of != job_id:
            return self.get_job(job.duplicate_of, follow=False)
        return job

    def _rewrite_job(self, job_id: str, change: Callable[[Any, JobRecord], JobRecord | None],
                     *, watch_fence: bool = False) -> JobRecord | None:
        """Read-modify-write of a job record under WATCH, retried on a concurrent write:
        ``change(pipe, job)`` returns the new record, or None to leave it as it is."""
        key = self.keys.job(job_id)
        watched = (key, self.keys.job_fence(job_id)) if watch_fence else (key,)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    raw = pipe.get(key)
                    if raw is None:
                        raise UnknownJob(f"no job {job_id}", job_id=job_id)
                    job = change(pipe, _load(JobRecord, raw, f"job {job_id}"))
                    if job is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.set(key, job.model_dump_json(), ex=self.job_ttl_s)
                    pipe.publish(self.keys.job_notify(job_id), "job")
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    @_translated
    def update_job(self, job_id: str, *, fence: Fence | None = None, **changes: Any) -> JobRecord:
        """Change a job record. With ``fence``, only if the caller's token is still the
        job's (a stale attempt of a job that recovery took over cannot end it)."""
        fkey = self.keys.job_fence(job_id)

        def change(pipe: Any, job: JobRecord) -> JobRecord:
            if fence is not None and pipe.get(fkey) not in (None, str(fence.token)):
                raise LockLost(f"job {job_id}: token {fence.token} was superseded; "
                               "the job is not ended by this attempt", job_id=job_id)
            try:
                return job.model_validate({**job.model_dump(), **changes})
            except ValidationError as exc:
                raise InvalidInput(f"job {job_id}: bad update: {exc.errors()[0]['msg']}",
                                   field=str(exc.errors()[0]["loc"][0])) from exc

        job = self._rewrite_job(job_id, change, watch_fence=True)
        assert job is not None  # change() always returns a record
        return job

    @_translated
    def claim_request(self, request_id: str, job_id: str) -> str | None:
        """Map a caller's request id to a job (SET NX, for the job TTL): None if this job
        now owns it (or owned it already), else the job id of the first request."""
        key = self.keys.request(request_id)
        if self.r.set(key, job_id, nx=True, ex=self.job_ttl_s):
            return None
        owner = self.r.get(key)
        if owner is None:  # expired in between: claim again
            return self.claim_request(request_id, job_id)
        return None if str(owner) == job_id else str(owner)

    @_translated
    def release_request(self, request_id: str, job_id: str) -> None:
        """Drop the mapping if it is this job's (its submission failed before the job)."""
        self._del_if(keys=[self.keys.request(request_id)], args=[job_id])

    @_translated
    def request_cancel(self, job_id: str) -> None:
        self.r.set(self.keys.job_cancel(job_id), "1", ex=self.job_ttl_s)

    @_translated
    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.keys.job_cancel(job_id)))

    @_translated
    def fail_if_queued(self, job_id: str, error: dict[str, Any]) -> JobRecord | None:
        """Fail a job that is still queued, atomically (WATCH); None if it was not queued."""
        def change(pipe: Any, job: JobRecord) -> JobRecord | None:
            if job.state != "queued":
                return None
            return JobRecord.model_validate({**job.model_dump(), "state": "failed",
                                             "finished_at": time.time(), "error": error})

        return self._rewrite_job(job_id, change)

    @_translated
    def add_audit(self, entry: AuditEntry, *, maxlen: int = 100_000,
                  approximate: bool = True) -> None:
        """Append to the capped audit stream (XADD MAXLEN ~ maxlen: Redis trims whole
        macro nodes, so it may hold a few more; the host's JSONL file keeps everything)."""
        self.r.xadd(self.keys.audit, {"entry": entry.model_dump_json()}, maxlen=maxlen,
                    approximate=approximate)

    @_translated
    def audit(self, limit: int = 50) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, oldest first."""
        rows = self.r.xrevrange(self.keys.audit, count=limit)
        return [_load(AuditEntry, f["entry"], "audit entry") for _, f in reversed(rows)]

    @_translated
    def add_event(self, job_id: str, step: str, message: str,
                  data: dict[str, Any] | None = None) -> JobEvent:
        seq = int(self.r.incr(self.keys.seq))
        event = JobEvent(job_id=job_id, seq=seq, ts=time.time(), step=step, message=message,
                         data=data or {})
        key = self.keys.job_events(job_id)
        with self.r.pipeline(transaction=False) as pipe:
            pipe.rpush(key, event.model_dump_json())
            pipe.expire(key, self.job_ttl_s)
            pipe.publish(self.keys.job_notify(job_id), str(seq))
            pipe.execute()
        return event

    def watch_job(self, job_id: str) -> JobWatch:
        """Subscribe to the job's notify channel (before reading it: see jobwatch)."""
        return JobWatch(self.r, self.keys.job_notify(job_id))

    @_translated
    def events(self, job_id: str, start: int = 0) -> list[JobEvent]:
        raw = self.r.lrange(self.keys.job_events(job_id), start, -1)
        return [_load(JobEvent, x, f"event of job {job_id}") for x in raw]

    # ------------------------------------------------------------ inventory

    @_translated
    def publish_inventory(self, inv: HostInventory, ttl_s: float, *, alive: bool = True) -> None:
        """Publish a host's domains; ``alive`` renews the host's heartbeat (workers only)."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.inventory(inv.host), inv.model_dump_json())
            if alive:
                pipe.set(self.keys.alive(inv.host), str(inv.published_at),
                         px=int(ttl_s * 1000))
            pipe.sadd(self.keys.hosts, inv.host)
            for dom in inv.domains:
                pipe.hset(self.keys.index_uuid, dom.uuid.lower(), inv.host)
                pipe.hset(self.keys.index_name, dom.name, dom.uuid.lower())
            pipe.execute()

    @_translated
    def renew_alive(self, host: str, ttl_s: float) -> None:
        """Renew a host's liveness key alone (the worker's liveness thread)."""
        self.r.set(self.keys.alive(host), str(time.time()), px=int(ttl_s * 1000))

    @_translated
    def withdraw_host(self, host: str) -> None:
        """A worker shutting down cleanly: its host is no longer alive."""
        self.r.delete(self.keys.alive(host))

    @_translated
    def host_alive(self, host: str) -> bool:
        return bool(self.r.exists(self.keys.alive(host)))

    @_translated
    def inventory(self, host: str) -> HostInventory | None:
        raw = self.r.get(self.keys.inventory(host))
        return _load(HostInventory, raw, f"inventory of {host}") if raw else None

    @_translated
    def hosts(self) -> list[str]:
        return sorted(str(h) for h in self.r.smembers(self.keys.hosts))

    @_translated
    def resolve_domain(self, ref: str) -> tuple[str, DomainInfo]:
        """Find a domain by uuid or name: its owning host and its last published info.

        Raises UnknownDomain, or HostUnavailable when the owning host has no live worker.
        """
        host, info = self.find_domain(ref)
        if not self.host_alive(host):
            raise HostUnavailable(
                f"domain {ref!r} lives on host {host}, which has no live worker",
                host=host, domain=info.uuid,
            )
        return host, info

    @_translated
    def find_domain(self, ref: str) -> tuple[str, DomainInfo]:
        """:meth:`resolve_domain` without the liveness check, for reading a domain's
        records (a host that is down does not hide them). A uuid is looked up first, then
        a name; two round trips for a uuid, three for a name."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.index_uuid, ref.lower())
            pipe.hget(self.keys.index_name, ref)
            by_uuid, by_name = pipe.execute()
        if by_uuid is not None:
            uuid, host = ref.lower(), by_uuid
        elif by_name:
            uuid = str(by_name)
            host = self.r.hget(self.keys.index_uuid, uuid)
        else:
            raise UnknownDomain(f"unknown domain {ref!r}: no live host reports it", domain=ref)
        inv = self.inventory(str(host)) if host else None
        info = next((d for d in inv.domains if d.uuid == uuid), None) if inv else None
        if inv is None or info is None:
            raise UnknownDomain(f"unknown domain {ref!r}: no live host reports it", domain=ref)
        return inv.host, info

    def ping(self) -> None:
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
