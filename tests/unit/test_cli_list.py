"""``snapshot-list`` pages and its fast read path (issue 11), against fakeredis.

The CLI runs in-process (CliRunner) with its client on a fakeredis store: paging,
order, the current mark, -l, -n and --json. The stdlib fast path
(:mod:`domsnap.fastlist`) talks RESP to fakeredis's TCP server and must give exactly
the store's pages, and give up (None: the full path answers) on every case it does
not handle."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner, Result

from domsnap import cli, fastlist
from domsnap.client import Client
from domsnap.settings import Settings
from domsnap.store import Store
from schemas.config import DomainConfig
from schemas.models import DomainInfo, HostInventory, SnapshotRecord

DOM = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
N = 25


def rec(i: int) -> SnapshotRecord:
    return SnapshotRecord(name=f"s{i:02d}", domain=DOM, domain_name="web1", host="h1",
                          driver="qemu", created_at=1000.0 + i, domain_state="running",
                          disk_only=i % 2 == 0, parent=f"s{i - 1:02d}" if i else None,
                          description=f"number {i}",
                          domain_config=DomainConfig(name="web1", uuid=DOM))


def fill(store: Store) -> None:
    store.publish_inventory(HostInventory(
        host="h1", driver="qemu", published_at=time.time(),
        domains=[DomainInfo(uuid=DOM, name="web1", state="running")]), 3600)
    store.put_snapshots(DOM, [rec(i) for i in range(N)], current="s07")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    r: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    st = Store(r, job_ttl_s=3600)
    fill(st)
    monkeypatch.setattr(cli, "_client",
                        lambda: Client(Settings(broker_url="memory://"), store=st))
    return st


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=False)


def names(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:] if not line.startswith(" ")]


def test_all_in_creation_order_with_current_marked(store: Store) -> None:
    res = run("snapshot-list", "web1")
    assert res.exit_code == 0, res.output
    assert names(res.stdout) == [f"s{i:02d}" for i in range(N)]
    assert res.stdout.splitlines()[8].split()[1] == "*"  # s07
    assert res.stderr == ""  # no paging note when everything is shown


def test_pages(store: Store) -> None:
    res = run("snapshot-list", "--limit", "5", "--offset", "10", "web1")
    assert names(res.stdout) == ["s10", "s11", "s12", "s13", "s14"]
    assert "(5 of 25 snapshots, from offset 10)" in res.stderr
    res = run("snapshot-list", "--newest-first", "--limit", "3", "web1")
    assert names(res.stdout) == ["s24", "s23", "s22"]
    assert names(run("snapshot-list", "--offset", "30", "web1").stdout) == []
    assert run("snapshot-list", "--limit", "-1", "web1").exit_code == 2


def test_long_one_and_json(store: Store) -> None:
    out = run("snapshot-list", "-l", "-n", "s03", "web1").stdout
    assert names(out) == ["s03"] and "description: number 3" in out and "parent:      s02" in out
    data = json.loads(run("snapshot-list", "--json", "--limit", "2", "--offset", "1",
                          "web1").stdout)
    assert data["current"] == "s07" and data["total"] == N
    assert data["snapshots"] == [rec(i).model_dump(mode="json") for i in (1, 2)]
    full = json.loads(run("snapshot-list", "--json", "web1").stdout)
    assert [s["name"] for s in full["snapshots"]] == [f"s{i:02d}" for i in range(N)]
    res = CliRunner().invoke(cli.main, ["snapshot-list", "-n", "nosuch", "web1"])
    assert res.exit_code == 3 and "'nosuch'" in res.stderr and "web1" in res.stderr


# ---------------------------------------------------------------- the fast path


@pytest.fixture(scope="module")
def tcp() -> Iterator[tuple[str, Store]]:
    """fakeredis over TCP: (its URL, a store on it holding web1's snapshots)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = fakeredis.TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"redis://127.0.0.1:{port}/0"
    st = Store(redis.Redis.from_url(url, decode_responses=True), job_ttl_s=3600)
    fill(st)
    try:
        yield url, st
    finally:
        srv.shutdown()
        srv.server_close()


def env(url: str, **more: str) -> dict[str, str]:
    return {"DOMSNAP_REDIS_URL": url, **more}


@pytest.mark.parametrize("offset, limit, newest", [(0, None, False), (0, 5, False),
                                                   (20, 10, False), (3, 0, False),
                                                   (0, 4, True), (30, 2, True)])
def test_fast_path_gives_the_stores_pages(tcp: tuple[str, Store], offset: int,
                                          limit: int | None, newest: bool) -> None:
    url, st = tcp
    for ref in ("web1", DOM, DOM.upper()):
        got = fastlist.page(ref, offset=offset, limit=limit, newest_first=newest,
                            environ=env(url))
        assert got == st.snapshot_page(DOM, offset=offset, limit=limit, newest_first=newest)
    one = fastlist.page("web1", name="s04", environ=env(url))
    assert one is not None and one.snapshots == [st.snapshot_summary(DOM, "s04")]
    assert one.current == "s07"


def test_fast_path_gives_up_where_the_full_path_must_answer(tcp: tuple[str, Store]) -> None:
    url, st = tcp
    port = url.rsplit(":", 1)[1].split("/")[0]
    for ref, kw, environ in [
            ("nosuch", {}, env(url)),  # unknown domain: the full path's error
            ("web1", {"name": "nosuch"}, env(url)),  # unknown snapshot
            ("web1", {}, env(url, DOMSNAP_CONFIG="/etc/domsnap.toml")),
            ("web1", {}, env(f"rediss://127.0.0.1:{port}/0")),
            ("web1", {}, env(url + "?socket_timeout=3")),
            ("web1", {}, env(f"redis://nouser:wrong@127.0.0.1:{port}/0")),  # error reply
            ("web1", {}, env("redis://127.0.0.1:1/0")),  # nothing listening
            ("web1", {}, env(url, DOMSNAP_KEY_PREFIX="other"))]:
        assert fastlist.page(ref, environ=environ, **kw) is None, (ref, kw, environ)
    # a record from before the index: the counts disagree
    legacy = rec(99).model_copy(update={"name": "old"})
    st.r.hset(st.keys.snapshots(DOM), "old", legacy.model_dump_json())
    try:
        assert fastlist.page("web1", environ=env(url)) is None
        assert fastlist.page("web1", name="old", environ=env(url)) is None
    finally:
        st.r.hdel(st.keys.snapshots(DOM), "old")
    assert fastlist.page("web1", environ=env(url)) is not None


@pytest.mark.parametrize("environ", [
    {}, {"DOMSNAP_REDIS_URL": "redis://x:1/2"}, {"domsnap_redis_url": "redis://y/3",
                                                 "Domsnap_Key_Prefix": "p"},
    {"DOMSNAP_KEY_PREFIX": "q", "OTHER": "1"}])
def test_fast_path_reads_the_settings_as_settings_does(
        environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.upper().startswith("DOMSNAP_")]:
        monkeypatch.delenv(k)
    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert fastlist.target() == (s.redis_url, s.key_prefix)


# ---------------------------------------------------------------- what start-up imports

HEAVY = ("celery", "kombu", "workers", "tasks", "pydantic", "pydantic_settings", "redis",
         "billiard")
_PROBE = """
import os, sys
from domsnap import cli
try:
    cli.main(sys.argv[1:], prog_name="domsnap")
except SystemExit as exc:
    code = exc.code
print("HEAVY", sorted({m.split(".")[0] for m in sys.modules}
                     & set(os.environ["PROBE_HEAVY"].split(","))), file=sys.stderr)
"""


def imported(args: list[str], environ: dict[str, str]) -> tuple[list[str], str]:
    """(the heavy top-level packages a CLI run imported, its stdout)."""
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DOMSNAP_")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args],
                          env={**env, **environ, "PYTHONPATH": repo,
                               "PROBE_HEAVY": ",".join(HEAVY)}, capture_output=True,
                          text=True, timeout=60, check=False)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("HEAVY"))
    return json.loads(line[6:].replace("'", '"')), proc.stdout


def test_help_imports_no_celery_redis_pydantic_or_workers() -> None:
    mods, out = imported(["--help"], {})
    assert mods == [] and "snapshot-list" in out and "policy-create" in out
    mods, out = imported(["snapshot-list", "--help"], {})
    assert mods == [] and "--limit" in out and "--offset" in out


def test_short_snapshot_list_imports_none_of_them(tcp: tuple[str, Store]) -> None:
    url, _ = tcp
    mods, out = imported(["snapshot-list", "--limit", "3", "web1"], env(url))
    assert mods == []
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["s00", "s01", "s02"]
    mods, out = imported(["snapshot-list", "-n", "s05", "web1"], env(url))
    assert mods == [] and out.splitlines()[1].split()[0] == "s05"
    # what the fast path does not handle goes the full way, with the same answer
    mods, out = imported(["snapshot-list", "-l", "--limit", "1", "web1"], env(url))
    assert "pydantic" in mods and "description: number 0" in out


def test_resp_replies_split_anywhere_parse_the_same() -> None:
    """The fast path's RESP2 reader, fed a byte at a time and in odd chunks."""
    big = "é" * 3000
    stream = (b"*5\r\n$1\r\na\r\n$-1\r\n:42\r\n*2\r\n+OK\r\n$" + str(len(big.encode())).encode()
              + b"\r\n" + big.encode() + b"\r\n$0\r\n\r\n" + b"$3\r\nxyz\r\n" + b"-ERR no\r\n")
    def feed(sock: socket.socket, chunk: int) -> None:
        for i in range(0, len(stream), chunk):
            sock.sendall(stream[i:i + chunk])

    for chunk in (1, 7, 4096):
        a, b = socket.socketpair()
        sent = threading.Thread(target=feed, args=(b, chunk))
        sent.start()
        conn = fastlist._Conn(a)
        assert conn._read() == ["a", None, 42, ["OK", big], ""]
        assert conn._read() == "xyz"
        with pytest.raises(fastlist._GiveUp):
            conn._read()
        sent.join()
        conn.close()
        b.close()
