"""The fast path of a short ``domsnap snapshot-list``: the happy case read with the
stdlib alone, so the command starts in about the time of ``import click`` (issue 11).

A short listing needs a few Redis commands and the snapshots' summaries. The full
path (:class:`domsnap.client.Client`) imports pydantic-settings, redis-py and pydantic,
which cost several times the rest of the command's start-up. This module speaks
just enough RESP2 over one socket to send those commands, pipelined, and parses the
summaries with :mod:`schemas.summary` (stdlib only).

It handles only the plain case and gives up (:func:`page` returns None) on anything
else, and the CLI then runs the full path, which gives the same answer or the proper
error: a ``DOMSNAP_CONFIG`` file, a URL other than ``redis://`` or ``unix://`` or with
options, any error reply (ACL, wrong type), a domain that does not resolve, an
inventory of another schema version, records the summary index does not cover yet, a
snapshot deleted while reading, a summary that does not parse, a socket error. So it
never has its own error messages, and its answers are the full path's (proved by
``tests/integration/test_snapshot_index.py``, which runs both on the real Redis).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

from domsnap.keys import Keys
from schemas import SCHEMA_VERSION
from schemas.summary import SnapshotPage, parse_summaries

CONNECT_TIMEOUT_S = 5.0  # as Store.from_url
TIMEOUT_S = 10.0


class _GiveUp(Exception):
    """Not the plain case: the full path takes over."""


def target(environ: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(redis URL, key prefix) as :class:`domsnap.settings.Settings` reads them from the
    environment (``DOMSNAP_*``, any case), or None when a config file is involved."""
    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    if env.get("DOMSNAP_CONFIG"):
        return None
    return (env.get("DOMSNAP_REDIS_URL", "redis://127.0.0.1:6379/0"),
            env.get("DOMSNAP_KEY_PREFIX", "domsnap"))


def _connect(url: str) -> _Conn:
    """A connected, authenticated connection for a plain ``redis://`` or ``unix://`` URL."""
    parts = urlsplit(url)
    db = 0
    if parts.query:
        key, _, value = parts.query.partition("=")
        if key != "db" or "&" in value:
            raise _GiveUp("URL options")
        db = int(value)
    sock: socket.socket
    if parts.scheme == "redis":
        path = parts.path.strip("/")
        if path:
            db = int(path)
        sock = socket.create_connection((parts.hostname or "localhost", parts.port or 6379),
                                        timeout=CONNECT_TIMEOUT_S)
    elif parts.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(parts.path)
    else:
        raise _GiveUp(f"scheme {parts.scheme}")
    sock.settimeout(TIMEOUT_S)
    conn = _Conn(sock)
    first: list[list[str]] = []
    if parts.password is not None:
        auth = [unquote(parts.password)]
        if parts.username:
            auth.insert(0, unquote(parts.username))
        first.append(["AUTH", *auth])
    if db:
        first.append(["SELECT", str(db)])
    if first:
        try:
            conn.call(*first)
        except BaseException:
            conn.close()
            raise
    return conn


def _encode(cmd: list[str]) -> bytes:
    out = [b"*%d\r\n" % len(cmd)]
    for arg in cmd:
        raw = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _Conn:
    """RESP2, pipelined: send every command, then read every reply from one buffer (a
    reply of 10,000 bulk strings is parsed with ``bytes.find`` and slices, no read call
    per line); an error reply gives up."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def call(self, *cmds: list[str]) -> list[Any]:
        self.sock.sendall(b"".join(_encode(c) for c in cmds))
        return [self._read() for _ in cmds]

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise _GiveUp("connection closed")
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            self._more()
        line = self.buf[self.pos:end]
        self.pos = end + 2
        return line

    def _array(self, n: int) -> list[Any]:
        """``n`` replies; bulk strings (what HVALS, ZRANGE, HMGET return) in a tight loop."""
        out: list[Any] = []
        buf, pos, find = self.buf, self.pos, self.buf.find
        for _ in range(n):
            end = find(b"\r\n", pos)
            if end < 0 or buf[pos:pos + 1] != b"$":
                self.pos = pos
                out.append(self._read())  # another type, or the buffer needs more
                buf, pos, find = self.buf, self.pos, self.buf.find
                continue
            size = int(buf[pos + 1:end])
            start = end + 2
            if size < 0:
                out.append(None)
                pos = start
            elif start + size + 2 <= len(buf):
                out.append(buf[start:start + size].decode())
                pos = start + size + 2
            else:
                self.pos = pos
                out.append(self._read())
                buf, pos, find = self.buf, self.pos, self.buf.find
        self.pos = pos
        return out

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._more()
            data = self.buf[self.pos:self.pos + n]
            self.pos += n + 2
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else self._array(n)
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest.decode()
        raise _GiveUp(f"error reply {rest[:80]!r}")  # '-' (or a type RESP2 has not)


def _listed(inventory: str | None, uuid: str) -> bool:
    """Whether a host inventory (its JSON) of this schema version lists the domain."""
    if inventory is None:
        return False
    inv = json.loads(inventory)
    if not isinstance(inv, dict) or inv.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise _GiveUp("inventory of another schema version")
    doms = inv.get("domains")
    if not isinstance(doms, list) or not all(isinstance(d, dict) for d in doms):
        raise _GiveUp("inventory does not parse")
    return any(d.get("uuid") == uuid for d in doms)


def _page(conn: _Conn, keys: Keys, ref: str, *, name: str | None, offset: int,
          limit: int | None, newest_first: bool) -> SnapshotPage:
    # the domain, as Store.resolve_domain finds it (a host that is down does not hide
    # its records, as Client._find)
    by_uuid, by_name = conn.call(["HGET", keys.index_uuid, ref.lower()],
                                 ["HGET", keys.index_name, ref])
    if by_uuid is not None:
        uuid, host = ref.lower(), by_uuid
    elif by_name is not None:
        uuid = by_name
        host = conn.call(["HGET", keys.index_uuid, uuid])[0]
    else:
        raise _GiveUp("unknown domain")
    if host is None:
        raise _GiveUp("unknown domain")
    cmds = [["GET", keys.inventory(host)], ["HGET", keys.meta(uuid), "current"]]
    if name is not None:
        cmds.append(["HGET", keys.summaries(uuid), name])
    else:
        cmds += [["HLEN", keys.snapshots(uuid)], ["ZCARD", keys.by_time(uuid)]]
        if limit is None:  # everything: as Store.snapshot_page, one HVALS and a sort
            cmds.append(["HVALS", keys.summaries(uuid)])
        elif limit:
            cmds.append(["ZREVRANGE" if newest_first else "ZRANGE", keys.by_time(uuid),
                         str(offset), str(offset + limit - 1)])
    inventory, current, *rest = conn.call(*cmds)
    if not _listed(inventory, uuid):
        raise _GiveUp("unknown domain")
    if name is not None:
        if rest[0] is None:
            raise _GiveUp("no summary")  # no such snapshot, or a record from before the index
        return SnapshotPage(total=1, offset=0, current=current,
                            snapshots=parse_summaries([rest[0]]))
    total, indexed, *names = rest
    if total != indexed:
        raise _GiveUp("records the index does not cover")
    if limit is None:
        if len(names[0]) != total:
            raise _GiveUp("written while reading")
        every = parse_summaries(names[0], sort=True)
        if newest_first:
            every.reverse()
        return SnapshotPage(total=total, offset=offset, current=current,
                            snapshots=every[offset:], newest_first=newest_first)
    page: list[str] = names[0] if names else []
    raws = conn.call(["HMGET", keys.summaries(uuid), *page])[0] if page else []
    if None in raws:
        raise _GiveUp("deleted while reading")
    return SnapshotPage(total=total, offset=offset, current=current,
                        snapshots=parse_summaries(raws), newest_first=newest_first)


def page(ref: str, *, name: str | None = None, offset: int = 0, limit: int | None = None,
         newest_first: bool = False, environ: dict[str, str] | None = None
         ) -> SnapshotPage | None:
    """The page a short ``snapshot-list`` shows (one snapshot with ``name``), or None
    when this path gives up and the full one must answer."""
    where = target(environ)
    if where is None:
        return None
    url, prefix = where
    conn = None
    try:
        conn = _connect(url)
        return _page(conn, Keys(prefix), ref, name=name, offset=offset, limit=limit,
                     newest_first=newest_first)
    except (_GiveUp, OSError, ValueError, IndexError, TypeError):  # SummaryError included
        return None
    finally:
        if conn is not None:
            conn.close()
