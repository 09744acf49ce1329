"""Bad CLI arguments and config files: a one-line error with the input code, nothing
changed, never a traceback (issue 7). The commands run in-process (click's CliRunner)
against a fakeredis store that holds one host and one domain, so everything up to the
enqueue is the real code; every generated case is bad, so nothing is ever enqueued.
A few real subprocess runs of the same are in tests/integration/test_bad_messages.py.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domsnap import cli
from domsnap.client import Client
from domsnap.errors import InvalidInput
from domsnap.settings import Settings
from domsnap.store import Store
from domsnap.xlcfg import parse_domain_config, parse_snapshot_config
from schemas.config import DomainConfig
from schemas.models import (
    SNAPSHOT_NAME_RE,
    DomainInfo,
    ErrorInfo,
    HostInventory,
    JobRecord,
    SnapshotRecord,
)
from tests.unit.test_bad_input import _not_uuid, config_texts

DOM = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
JOB = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
CASES = settings(max_examples=1000, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                        HealthCheck.function_scoped_fixture])


class Fleet:
    """fakeredis with a live host h1 running domain web1 (snapshot s1), and the CLI
    wired to it."""

    def __init__(self) -> None:
        self.r: Any = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        self.store = Store(self.r, job_ttl_s=3600)
        self.store.publish_inventory(HostInventory(
            host="h1", driver="qemu", published_at=time.time(),
            domains=[DomainInfo(uuid=DOM, name="web1", state="running")]), 3600)
        self.store.commit_snapshot(SnapshotRecord(
            name="s1", domain=DOM, domain_name="web1", host="h1", driver="qemu",
            created_at=1.0, domain_state="running", disk_only=False,
            domain_config=DomainConfig(name="web1", uuid=DOM)))

    def dump(self) -> dict[str, Any]:
        return {k: self.r.dump(k) for k in sorted(self.r.keys("*"))}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    mp = pytest.MonkeyPatch()
    # the CLI's Redis is this fakeredis, its broker kombu's in-memory one: a case that
    # wrongly got as far as the enqueue shows as a job in Redis, and reaches no real queue
    mp.setattr(cli, "_client",
               lambda: Client(Settings(broker_url="memory://"), store=f.store))
    try:
        yield f
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def cfgdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args), catch_exceptions=True)


def assert_refused(fleet: Fleet, before: dict[str, Any], res: Result, *,
                   codes: tuple[int, ...] = (2,)) -> str:
    assert res.exit_code in codes, (res.exit_code, res.output, res.stderr, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception  # never a traceback
    err = res.stderr.strip()
    assert err and "Traceback" not in err and "Value error" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(("domsnap: error: ", "Error: ")), err
    assert len(last) < 700, last
    assert fleet.dump() == before, "a refused command changed Redis"
    return last


# ---------------------------------------------------------------- the defects of issue 7


def test_empty_name_is_an_error_not_the_epoch_second(fleet: Fleet) -> None:
    before = fleet.dump()
    msg = assert_refused(fleet, before, run("snapshot-create", "-n", "", "--no-wait", "web1"))
    assert "name" in msg and "empty" in msg


def test_client_refuses_an_empty_name(fleet: Fleet) -> None:
    before = fleet.dump()
    with pytest.raises(InvalidInput) as info:
        Client(Settings(broker_url="memory://"), store=fleet.store).create("web1", name="")
    assert info.value.field == "name"
    assert fleet.dump() == before


def test_running_and_paused_together_is_a_usage_error(fleet: Fleet) -> None:
    before = fleet.dump()
    msg = assert_refused(fleet, before, run("snapshot-revert", "-n", "s1", "--running",
                                            "--paused", "--no-wait", "web1"))
    assert "--running and --paused" in msg


@pytest.mark.parametrize(("code", "exit_code"), [("invalid_input", 2), ("command_failed", 8),
                                                  ("refused", 5), ("nonsense", 1)])
def test_job_wait_exits_with_the_failed_jobs_code(fleet: Fleet, code: str,
                                                  exit_code: int) -> None:
    job_id = JOB[:-2] + f"{exit_code:02d}"
    fleet.store.create_job(JobRecord(
        job_id=job_id, op="create", domain=DOM, host="h1", name="x", submitted_at=1.0,
        state="failed", error=ErrorInfo(code=code, message="it broke")))
    res = run("job", "--wait", job_id)
    assert res.exit_code == exit_code, (res.output, res.stderr)
    assert "failed" in res.output and "it broke" in res.output
    assert run("job", job_id).exit_code == 0  # showing a failed job is not a failure


def test_job_wait_exits_0_for_a_job_that_succeeded(fleet: Fleet) -> None:
    job_id = JOB[:-2] + "99"
    fleet.store.create_job(JobRecord(job_id=job_id, op="create", domain=DOM, host="h1",
                                     name="x", submitted_at=1.0, state="succeeded"))
    assert run("job", "--wait", job_id).exit_code == 0


@pytest.mark.parametrize("cmd", [["snapshot-revert", "-n", "nosuch", "web1"],
                                 ["snapshot-delete", "-n", "nosuch", "web1"],
                                 ["snapshot-list", "-n", "nosuch", "web1"]])
def test_not_found_says_what_the_user_typed(fleet: Fleet, cmd: list[str]) -> None:
    before = fleet.dump()
    msg = assert_refused(fleet, before, run(*cmd), codes=(3,))
    assert "'nosuch'" in msg and "web1" in msg and DOM not in msg


def test_not_found_by_uuid_shows_the_uuid(fleet: Fleet) -> None:
    msg = assert_refused(fleet, fleet.dump(), run("snapshot-delete", "-n", "nosuch", DOM),
                         codes=(3,))
    assert DOM in msg


# ---------------------------------------------------------------- generated bad arguments

_bad_names = st.one_of(
    st.sampled_from(["", ".", "..", "a/b", "../../etc", "x" * 129, "a b", "é", "\x00"]),
    st.text(max_size=200).filter(lambda v: not SNAPSHOT_NAME_RE.fullmatch(v) and "\x00" not in v
                                 and not v.startswith("-")))
_bad_numbers = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "abc", "", "1e999",
                                          "0x10"]),
                         st.floats(max_value=0).map(str))
_bad_job_ids = st.one_of(st.text(max_size=60).filter(lambda v: not v.startswith("-")
                                                     and _not_uuid(v)),
                         st.sampled_from(["", "123", JOB + "0", "{" * 5]))
_long_path = st.builds(lambda n: "/var/lib/xen/snapshots/" + "m" * n, st.integers(256, 400))


@st.composite
def bad_argv(draw: st.DrawFn) -> list[str]:
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return ["snapshot-create", "-n", draw(_bad_names), "--no-wait", "web1"]
    if kind == 1:
        return ["snapshot-create", "--type", draw(st.text(max_size=10).filter(
            lambda v: v not in ("internal", "external"))), "web1"]
    if kind == 2:
        return [draw(st.sampled_from(["snapshot-create", "snapshot-delete"])), "--timeout",
                draw(_bad_numbers), "-n", "s1", "web1"]
    if kind == 3:
        return ["snapshot-revert", "-n", draw(_bad_names), "--no-wait", "web1"]
    if kind == 4:
        return ["snapshot-delete", "-n", draw(_bad_names), "--no-wait", "web1"]
    if kind == 5:
        return ["snapshot-revert", "-n", "s1", *draw(st.permutations(["--running", "--paused"])),
                "web1"]
    if kind == 6:
        return ["job", draw(_bad_job_ids)]
    if kind == 7:
        return ["worker", draw(st.sampled_from(["-c", "--inflight-concurrency"])),
                draw(st.one_of(st.sampled_from(["0", "-3", "257", "x", ""]),
                               st.integers(max_value=0).map(str)))]
    if kind == 8:
        return ["worker", "--driver", draw(st.text(max_size=8).filter(
            lambda v: v not in ("qemu", "xl")))]
    if kind == 9:
        return [draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=14)
                     .filter(lambda v: v not in cli.main.commands and not v.startswith("-")))]
    if kind == 10:
        cmd = draw(st.sampled_from(sorted(cli.main.commands)))
        return [cmd, "--" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3,
                                         max_size=10).filter(lambda v: v not in (
                                             "json", "help", "wait", "long", "name", "type"))),
                "web1"]
    return [draw(st.sampled_from(["snapshot-revert", "snapshot-delete"]))]  # no -n, no domain


@CASES
@given(bad_argv())
def test_bad_arguments_are_refused(fleet: Fleet, argv: list[str]) -> None:
    before = fleet.dump()
    assert_refused(fleet, before, run(*argv))


_bad_lines = st.sampled_from([
    "name = \"a/b\"", "name = \"..\"", "memory = \"relative/path\"", "type = \"both\"",
    "disk = [ 'vdev=xvda,type=sideways' ]", "disk = [ 'vdev=xvda', 'vdev=xvda' ]",
    "disk = 'vdev=xvda'", "nosuchkey = 1", "name = 9" + "9" * 5000, "name = [ 1, [ 2 ] ]",
    "description = \"unterminated", "= 1",
])


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config_texts, _bad_lines)
def test_bad_snapshot_config_files_are_refused(fleet: Fleet, cfgdir: Path, junk: str,
                                               bad: str) -> None:
    text = junk + "\n" + bad + "\n"
    path = cfgdir / "snap.cfg"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(InvalidInput):  # else the generator is wrong
        parse_snapshot_config(text)
    before = fleet.dump()
    assert_refused(fleet, before, run("snapshot-create", "--no-wait", "web1", str(path)))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(config_texts, st.sampled_from(["memory = 9" + "9" * 5000, "uuid = \"nope\"",
                                      "type = \"sideways\"", "name = \"a b\"", "= 2",
                                      "disk = [ 'nosuchparam=1' ]", "vcpus = [ [ 1 ] ]"]))
def test_bad_domain_config_files_are_refused(fleet: Fleet, cfgdir: Path, junk: str,
                                             bad: str) -> None:
    text = junk + "\n" + bad + "\n"
    with pytest.raises(InvalidInput):
        parse_domain_config(text)
    path = cfgdir / "dom.cfg"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = fleet.dump()
    assert_refused(fleet, before, run("domain-create", str(path)))


def test_a_memory_file_name_too_long_from_a_config_is_refused(fleet: Fleet,
                                                              cfgdir: Path) -> None:
    path = cfgdir / "long.cfg"
    path.write_text('name = "s9"\nmemory = "/var/lib/xen/snapshots/' + "m" * 300 + '"\n')
    before = fleet.dump()
    msg = assert_refused(fleet, before, run("snapshot-create", "--no-wait", "web1", str(path)))
    assert msg.startswith("domsnap: error: memory_file: path component")
