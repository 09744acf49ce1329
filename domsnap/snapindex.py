"""Reading a domain's snapshots: full records, and the summary index that makes a
listing cheap at scale (issue 11). Mixed into :class:`domsnap.store.Store`.

Per domain, next to the records hash (name -> full SnapshotRecord JSON, which carries
the whole domain config), the store keeps

- ``:summaries``: hash, name -> :class:`~schemas.summary.SnapshotSummary` JSON;
- ``:bytime``: sorted set of names scored by ``created_at`` (ties by name, the order
  :meth:`IndexReads.list_snapshots` has always had).

Both are written in the same atomic write as the record (the fenced Lua script or the
MULTI/EXEC of :mod:`domsnap.store`), so a page is ``ZRANGE`` + ``HMGET`` of the page's
summaries: its cost does not grow with the number of snapshots. A listing of all of them
is one ``HVALS`` of the summaries and a sort here (cheaper than fetching every name and
then every summary).

Records written before the index existed (or by an older worker during a rolling
upgrade) are not in it. A reader sees that from the counts (``HLEN`` of the records
against ``ZCARD`` of the index, in the same round trip as the page) and then lists from
the full records as before: always right, only slower. Readers never write (a reader's
ACL user may not): the index is filled by :meth:`IndexReads.rebuild_index`, which the
worker runs for its domains at start (``workers.engine.recovery.reconcile``) and
``domsnap fsck --repair`` runs for the domains it checks (finding ``index_mismatch``).
"""

from __future__ import annotations

from typing import Any

import redis

from domsnap.errors import BackendError, DomsnapError, InvalidInput, SchemaMismatch, UnknownSnapshot
from domsnap.keys import Keys
from domsnap.storebase import _load, _translated
from schemas.models import SnapshotRecord
from schemas.summary import (
    SnapshotPage,
    SnapshotSummary,
    SummaryError,
    parse_summaries,
    summary_of,
)

_RETRIES = 3  # a page that raced a delete is read again this often, then from the records


def _parsed(raws: list[str], what: str, *, sort: bool = False) -> list[SnapshotSummary]:
    try:
        return parse_summaries(raws, sort=sort)
    except SummaryError as exc:
        if exc.version is not None:
            raise SchemaMismatch(f"{what}: {exc}") from None
        raise BackendError(f"{what}: corrupt summary in Redis: {exc}") from None


class IndexReads:
    """The snapshot reads of the store (records, summaries, pages) and the index rebuild."""

    r: Any
    keys: Keys

    # ------------------------------------------------------------ full records

    @_translated
    def get_snapshot(self, uuid: str, name: str) -> SnapshotRecord:
        raw = self.r.hget(self.keys.snapshots(uuid), name)
        if raw is None:
            raise UnknownSnapshot(f"no snapshot {name!r} on domain {uuid}", name=name, domain=uuid)
        return _load(SnapshotRecord, raw, f"snapshot {name}")

    @_translated
    def list_snapshots(self, uuid: str) -> list[SnapshotRecord]:
        """Every full record, oldest first (ties by name). Reads and parses them all:
        for listings use :meth:`snapshot_page`."""
        raw = self.r.hgetall(self.keys.snapshots(uuid))
        recs = [_load(SnapshotRecord, v, f"snapshot {k}") for k, v in raw.items()]
        return sorted(recs, key=lambda r: (r.created_at, r.name))

    @_translated
    def get_snapshots(self, uuid: str, names: list[str]) -> list[SnapshotRecord]:
        """The full records of ``names`` (a page), in that order; names that are gone
        (deleted since the page was read) are left out."""
        if not names:
            return []
        raws = self.r.hmget(self.keys.snapshots(uuid), names)
        return [_load(SnapshotRecord, raw, f"snapshot {n}")
                for n, raw in zip(names, raws, strict=True) if raw is not None]

    @_translated
    def current(self, uuid: str) -> str | None:
        value = self.r.hget(self.keys.meta(uuid), "current")
        return str(value) if value is not None else None

    # ------------------------------------------------------------ summaries

    @_translated
    def snapshot_summary(self, uuid: str, name: str) -> SnapshotSummary:
        """One snapshot's summary (UnknownSnapshot if there is no such snapshot)."""
        raw = self.r.hget(self.keys.summaries(uuid), name)
        if raw is None:  # no snapshot, or a record from before the index
            return summary_of(self.get_snapshot(uuid, name))
        return _parsed([raw], f"snapshot {name}")[0]

    @_translated
    def snapshot_page(self, uuid: str, *, offset: int = 0, limit: int | None = None,
                      newest_first: bool = False) -> SnapshotPage:
        """``limit`` snapshots (all with None) from ``offset`` in creation order, with
        the total and the current pointer: two round trips, nothing parsed but the
        page's summaries."""
        if offset < 0 or (limit is not None and limit < 0):
            raise InvalidInput(f"offset {offset} / limit {limit}: must not be negative",
                               field="offset" if offset < 0 else "limit")
        k = self.keys
        for _ in range(_RETRIES):
            with self.r.pipeline(transaction=False) as pipe:
                pipe.hlen(k.snapshots(uuid))
                pipe.zcard(k.by_time(uuid))
                pipe.hget(k.meta(uuid), "current")
                if limit is None:  # everything: one HVALS and a sort here beat ZRANGE+HMGET
                    pipe.hvals(k.summaries(uuid))
                elif limit:
                    rng = pipe.zrevrange if newest_first else pipe.zrange
                    rng(k.by_time(uuid), offset, offset + limit - 1)
                total, indexed, current, *rest = pipe.execute()
            if total != indexed:
                break  # records the index does not cover yet: list from the records
            what = f"snapshots of {uuid}"
            if limit is None:
                if len(rest[0]) != total:
                    continue  # a write in between: read again
                every = _parsed(rest[0], what, sort=True)
                if newest_first:
                    every.reverse()
                return SnapshotPage(total=int(total), offset=offset, current=current,
                                    snapshots=every[offset:], newest_first=newest_first)
            names: list[str] = rest[0] if rest else []
            raws = self.r.hmget(k.summaries(uuid), names) if names else []
            if None in raws:
                continue  # deleted between the two round trips: read the page again
            return SnapshotPage(total=int(total), offset=offset, current=current,
                                snapshots=_parsed(raws, what), newest_first=newest_first)
        recs = self.list_snapshots(uuid)
        if newest_first:
            recs.reverse()
        end = None if limit is None else offset + limit
        return SnapshotPage(total=len(recs), offset=offset, current=self.current(uuid),
                            snapshots=[summary_of(r) for r in recs[offset:end]],
                            newest_first=newest_first)

    @_translated
    def index_complete(self, uuid: str) -> bool:
        """Whether the summary index covers every record of the domain."""
        k = self.keys
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hlen(k.snapshots(uuid))
            pipe.zcard(k.by_time(uuid))
            pipe.hlen(k.summaries(uuid))
            n, indexed, summaries = pipe.execute()
        return bool(n == indexed == summaries)

    @staticmethod
    def _wanted(raw: dict[str, str]) -> tuple[dict[str, str], dict[str, float]]:
        """The summaries and scores the records ``raw`` (name -> JSON) call for; a record
        that does not parse (corrupt, or of another schema version) has none."""
        want_sum: dict[str, str] = {}
        want_score: dict[str, float] = {}
        for name, value in raw.items():
            try:
                rec = _load(SnapshotRecord, value, f"snapshot {name}")
            except DomsnapError:
                continue
            want_sum[name] = summary_of(rec).to_json()
            want_score[name] = rec.created_at
        return want_sum, want_score

    @_translated
    def index_matches(self, uuid: str) -> bool:
        """Whether the summaries and the by-time index are exactly what the records call
        for (fsck: a full comparison, where :meth:`index_complete` only counts)."""
        k = self.keys
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.snapshots(uuid))
            pipe.hgetall(k.summaries(uuid))
            pipe.zrange(k.by_time(uuid), 0, -1, withscores=True)
            raw, have_sum, scored = pipe.execute()
        want_sum, want_score = self._wanted(raw)
        return bool(have_sum == want_sum and dict(scored) == want_score)

    @_translated
    def rebuild_index(self, uuid: str) -> bool:
        """Make the summaries and the by-time index exactly those of the records (a
        writer's job: workers at start, fsck --repair). True if anything changed.

        Atomic against the writers: WATCH on the three keys, rewrite in MULTI/EXEC, read
        again if a write came in between. A record that does not parse stays out of the
        index, so listings keep going through the records and report it as they always
        did."""
        k = self.keys
        keys = (k.snapshots(uuid), k.summaries(uuid), k.by_time(uuid))
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    want_sum, want_score = self._wanted(pipe.hgetall(keys[0]))
                    have_sum = pipe.hgetall(keys[1])
                    have_score = dict(pipe.zrange(keys[2], 0, -1, withscores=True))
                    if have_sum == want_sum and have_score == want_score:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.delete(keys[1], keys[2])
                    if want_sum:
                        pipe.hset(keys[1], mapping=want_sum)
                        pipe.zadd(keys[2], want_score)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue
