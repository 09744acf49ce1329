"""Scheduled backups for real: two `domsnap scheduler` processes (Celery beat on
celery-redbeat + the policy-run worker), real workers on two hosts, real QEMU domains,
real qcow2. A fast-interval policy snapshots on schedule, fires each run once, prunes
exactly what its rules drop (never the manual or protected snapshot), and leaves disks,
sidecars and Redis agreeing; the metrics show the runs. An external policy over a raw
and a qcow2 disk keeps its chains short (chain guard) and every kept snapshot
revertible, with the disk content checked."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from domsnap.client import Client
from domsnap.policies import PolicyStore
from schemas.policy import Policy
from tests.integration.cluster import DOMSNAP, Cluster, Domain, listed_domain, succeeded
from tests.integration.diskdata import assert_state, internal_snapshots, write_state
from workers.app import make_app
from workers.engine.schedule import QueueOps, run_policy

pytestmark = [pytest.mark.integration, pytest.mark.vm]

SENT = re.compile(r"Sending due task (\S+)")


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scheduler:
    def __init__(self, cluster: Cluster, tag: str, queue: str) -> None:
        self.log = cluster.base / f"scheduler-{tag}.log"
        self.port = free_port()
        env = cluster.env_for(f"sched-{tag}", DOMSNAP_BEAT_MAX_INTERVAL_S="1",
                              DOMSNAP_SCHEDULE_QUEUE=queue)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [*DOMSNAP, "scheduler", "-c", "4", "--metrics-port", str(self.port)],
                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def sent(self, entry: str) -> int:
        return sum(1 for m in SENT.finditer(self.text()) if m.group(1) == entry)

    def expired(self) -> int:
        """Runs this scheduler's worker dropped unstarted (older than the period)."""
        return self.text().count("Discarding revoked task: domsnap.policy.run[")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def schedulers(cluster: Cluster) -> Iterator[list[Scheduler]]:
    queue = f"domsnap.schedule.{cluster.suffix}"
    both = [Scheduler(cluster, f"{cluster.suffix}-{i}", queue) for i in (1, 2)]
    try:
        for s in both:  # both workers are up, whichever beat holds the lock
            wait_for(lambda s=s: "ready." in s.text() or s.proc.poll() is not None,
                     f"scheduler {s.log}", 60)
            assert s.proc.poll() is None, s.text()
        yield both
    finally:
        for s in both:
            s.stop()


def policy_names(client: Client, dom: Domain, policy: str) -> list[str]:
    return [r.name for r in client.snapshots(dom.uuid) if r.policy == policy]


def check_disks_match_records(client: Client, dom: Domain) -> None:
    """Each qcow2 holds exactly the internal snapshots the records name, and each
    record has its sidecar (and no other sidecar exists)."""
    names = {r.name for r in client.snapshots(dom.uuid)}
    for vdev in dom.vdevs:
        assert set(internal_snapshots(dom.active(vdev))) == names, f"{dom.name} {vdev}"
    sidecars = {p.stem for p in (dom.host.snapshots / dom.uuid).glob("*.json")}
    assert sidecars == names


def test_beat_runs_policy_on_two_hosts_once_per_slot_and_prunes(
        cluster: Cluster, h1: str, h2: str, schedulers: list[Scheduler]) -> None:
    client = cluster.client()
    a = listed_domain(cluster, h1, "sched-a")
    c = listed_domain(cluster, h1, "sched-c")
    b = listed_domain(cluster, h2, "sched-b")
    label = f"sched-{cluster.suffix}"
    for dom in (a, c):
        assert cluster.hosts[h1].cli("domain-label", dom.name, f"tier={label}",
                                     check=True).stdout.strip() == f"tier={label}"
    succeeded(client, client.create(a.name, name="manual-1", disk_only=True))
    pname = f"fast-{cluster.suffix}"
    entry = f"policy:{pname}"
    out = cluster.hosts[h1].cli(
        "policy-create", pname, "--every", "3", "--label", f"tier={label}", "--domain", b.name,
        "--disk-only", "--keep-last", "2", "--max-per-host", "1",
        "--name-template", "{policy}-{utc:%H%M%S.%f}", "--json", check=True).stdout
    assert Policy.model_validate_json(out).retention.keep_last == 2
    pst = PolicyStore(client.store)
    try:
        # after its second run, protect the newest policy snapshot of a: keep-last 2
        # would drop it two runs later; protected, it must stay
        def successes(dom: Domain) -> int:
            return sum(1 for r in pst.runs(pname, 50) for d in r.domains
                       if d.domain == dom.uuid and d.outcome == "succeeded")

        wait_for(lambda: successes(a) >= 2, "two snapshots of a", 120)
        protected = policy_names(client, a, pname)[-1]
        cluster.hosts[h1].cli("snapshot-protect", "-n", protected, a.name, check=True)
        # a loaded machine skips runs (the last one still going): count snapshots made
        wait_for(lambda: min(successes(d) for d in (a, b, c)) >= 4, "four snapshots each",
                 300)
        cluster.hosts[h1].cli("policy-pause", pname, check=True)
        # paused: once the entry is disabled, every run that was sent has ended (or was
        # dropped unstarted, expired)
        wait_for(lambda: '"enabled": false' in str(client.store.r.hget(
            f"{cluster.prefix}:beat:{entry}", "definition")), "the entry disabled", 30)
        wait_for(lambda: sum(s.sent(entry) for s in schedulers) == len(pst.runs(pname, 50))
                 + sum(s.expired() for s in schedulers), "every sent run recorded", 120)
    finally:
        pst.set_paused(pname, True)

    runs = pst.runs(pname, 50)
    # one beat fired, the other waited for the lock; each firing ran once
    fired = [s.sent(entry) for s in schedulers]
    expired = sum(s.expired() for s in schedulers)
    assert sorted(fired)[0] == 0 and sum(fired) == len(runs) + expired, (fired, expired)
    assert len({r.run_id for r in runs}) == len(runs)
    jobs: dict[str, list[str]] = {a.uuid: [], b.uuid: [], c.uuid: []}
    for run in runs:
        assert {d.domain for d in run.domains} == {a.uuid, b.uuid, c.uuid}
        # max-per-host 1: the creates of a and c (both on h1) never overlap
        spans = sorted((j.started_at or 0, j.finished_at or 0) for j in (
            client.job(str(d.job_id)) for d in run.domains
            if d.host == h1 and d.outcome == "succeeded"))
        assert all(s1[1] <= s2[0] for s1, s2 in zip(spans, spans[1:], strict=False)), spans
        for d in run.domains:
            assert d.outcome in ("succeeded", "skipped"), d
            if d.outcome == "skipped":
                assert d.reason and "still going" in d.reason, d
            else:
                jobs[d.domain].append(str(d.job_id))
    for uuid, ids in jobs.items():
        assert len(ids) >= 4 and len(set(ids)) == len(ids), (uuid, ids)  # never queued twice
    # pruning: the 2 newest of the policy, the protected one, the manual one
    for dom, extra in ((a, {protected, "manual-1"}), (b, set()), (c, set())):
        made = [r for r in client.snapshots(dom.uuid) if r.policy == pname]
        newest = sorted((r for r in made if r.name != protected),
                        key=lambda r: r.created_at)[-2:]
        assert {r.name for r in client.snapshots(dom.uuid)} == {r.name for r in newest} | extra
        check_disks_match_records(client, dom)
    # the history shows what was pruned, and policy-show prints it
    pruned = {n for r in runs for d in r.domains if d.domain == a.uuid for n in d.pruned}
    assert "manual-1" not in pruned and protected not in pruned and len(pruned) >= 1
    show = cluster.hosts[h1].cli("policy-show", pname, "--runs", "2", check=True).stdout
    assert "(paused)" in show and a.name in show and b.name in show

    # metrics, from the CLI and from a scheduler's port, agree with the records
    text = cluster.hosts[h1].cli("metrics", check=True).stdout
    ok = float(re.search(r'domsnap_jobs_total\{op="create",outcome="succeeded"\} (\S+)',
                         text).group(1))  # type: ignore[union-attr]
    assert ok >= sum(len(v) for v in jobs.values()) + 1  # + manual-1
    for dom in (a, b, c):
        newest_ts = max(r.created_at for r in client.snapshots(dom.uuid) if r.policy == pname)
        m = re.search(r'domsnap_policy_domain_last_success_timestamp_seconds\{domain="'
                      + dom.uuid + r'",domain_name="[^"]+",policy="' + pname + r'"\} (\S+)', text)
        assert m and abs(float(m.group(1)) - newest_ts) < 1e-3, dom.name
    served = urllib.request.urlopen(f"http://127.0.0.1:{schedulers[0].port}/metrics",
                                    timeout=10).read().decode()
    assert f'domsnap_policy_period_seconds{{policy="{pname}"}} 3.0' in served
    assert f'domsnap_host_up{{host="{h1}"}} 1.0' in served
    pst.delete(pname)
    # the deleted policy's entry leaves the schedule
    wait_for(lambda: not client.store.r.exists(f"{cluster.prefix}:beat:{entry}"),
             "the entry removed", 30)


def chain_length(path: str) -> int:
    """Images in the chain, as qemu-img sees it (raw bottom images included)."""
    import json

    res = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         capture_output=True, text=True, timeout=60, check=True,
                         stdin=subprocess.DEVNULL)
    return len(json.loads(res.stdout))


def _expected(patterns: list[int], k: int, vdev_xor: int) -> dict[int, int]:
    """Disk state at the k-th snapshot: slot 0 holds step k's pattern, slot i+1 step i's."""
    state = {0: patterns[k] ^ vdev_xor}
    for i in range(len(patterns)):
        state[i + 1] = (patterns[i] ^ vdev_xor) if i <= k else 0
    return state


def test_external_policy_raw_and_qcow2_chain_guard_keeps_every_snapshot_revertible(
        cluster: Cluster, hv_host: str) -> None:
    client = cluster.client()
    dom = cluster.create_domain(hv_host, f"chain-{cluster.suffix}", disks=2, guest=False,
                                raw_disk=True)
    cluster.wait_inventory(dom)
    va, vb = dom.vdevs
    pname = f"ext-{dom.host.driver}-{cluster.suffix}"
    pst = PolicyStore(client.store)
    policy = pst.create({"name": pname, "interval_s": 3600, "select": {"domains": [dom.uuid]},
                         "type": "external", "disk_only": True, "max_chain_depth": 3,
                         "retention": {"keep_last": 10},
                         "name_template": "{policy}-{utc:%H%M%S.%f}"})
    ops = QueueOps(client.store, make_app(cluster.settings()))
    patterns = [0x11, 0x22, 0x33, 0x44, 0x55]
    made: list[str] = []
    try:
        for k, pat in enumerate(patterns):
            write_state(dom, va, {0: pat, k + 1: pat})
            write_state(dom, vb, {0: pat ^ 0xFF, k + 1: pat ^ 0xFF})
            run = run_policy(pst, ops, policy)
            (out,) = run.domains
            assert out.outcome == "succeeded", (k, out.reason)
            made.append(str(out.snapshot))
            if k == 0:
                # the raw disk now runs on a qcow2 overlay: the config must say so, or the
                # next start opens the overlay as raw (regression: create kept "raw")
                assert {d["vdev"]: d["format"] for d in dom.config()["disks"]} == {
                    va: "qcow2", vb: "qcow2"}
                dom.destroy()
                dom.start()
                write_state(dom, vb, {0: pat ^ 0xFF, k + 1: pat ^ 0xFF})
                assert_state(dom.active(vb), {0: pat ^ 0xFF, 1: pat ^ 0xFF}, "after restart")
                cluster.wait_inventory(dom)
            # never more than max_chain_depth links below the active image
            for vdev in (va, vb):
                assert chain_length(dom.active(vdev)) <= 1 + policy.max_chain_depth
        # the guard merged the two oldest away; the newest three remain
        assert policy_names(client, dom, pname) == made[2:]
        # pruning by keep-last 2 (through the normal delete: a merge) drops one more
        pst.create({**policy.model_dump(), "retention": {"keep_last": 2}}, replace=True)
        dry = dom.host.cli("prune", "--policy", pname, "--dry-run", dom.name, check=True).stdout
        assert f"would delete {made[2]}  (no rule keeps it)" in dry, dry
        assert f"keep    {made[4]}  (keep-last)" in dry, dry
        assert policy_names(client, dom, pname) == made[2:]  # a dry run deletes nothing
        (plan,) = client.prune(policy=pname, domain=dom.name)
        assert plan.deleted == [made[2]] and not plan.errors
        kept = policy_names(client, dom, pname)
        assert kept == made[3:]
        # every kept snapshot reverts to exactly its disk content, raw disk included
        for name in kept:
            k = made.index(name)
            succeeded(client, client.revert(dom.name, name, start="running"))
            assert_state(dom.active(va), _expected(patterns, k, 0), f"{name} {va}")
            assert_state(dom.active(vb), _expected(patterns, k, 0xFF), f"{name} {vb}")
    finally:
        pst.delete(pname)


def test_policy_cli_round_trip_and_exit_codes(cluster: Cluster, h1: str) -> None:
    """The policy commands against real Redis: JSON out, errors name the field, exit
    codes (2 bad input, 3 unknown, 4 exists), pause/resume, labels, protection."""
    import json

    h = cluster.hosts[h1]
    name = f"cli-{cluster.suffix}"
    bad = h.cli("policy-create", name, "--cron", "0 3 * *", "--label", "a=b")
    assert bad.returncode == 2 and "cron" in bad.stderr, bad.stderr
    bad = h.cli("policy-create", name, "--every", "60", "--label", "a=b", "--timezone", "Nowhere")
    assert bad.returncode == 2 and "time zone" in bad.stderr, bad.stderr
    made = json.loads(h.cli("policy-create", name, "--cron", "15 */6 * * 1-5", "--timezone",
                            "America/New_York", "--host", h1, "--keep-daily", "3", "--json",
                            check=True).stdout)
    assert made["cron"] == "15 */6 * * 1-5" and made["select"]["hosts"] == [h1]
    assert h.cli("policy-create", name, "--every", "60", "--host", h1).returncode == 4
    listed = json.loads(h.cli("policy-list", "--json", check=True).stdout)
    assert name in {p["name"] for p in listed}
    assert "cron '15 */6 * * 1-5' America/New_York" in h.cli("policy-list", check=True).stdout
    assert json.loads(h.cli("policy-pause", name, "--json", check=True).stdout)["paused"]
    shown = json.loads(h.cli("policy-show", name, "--json", check=True).stdout)
    assert shown["policy"]["paused"] and shown["runs"] == []
    assert not json.loads(h.cli("policy-resume", name, "--json", check=True).stdout)["paused"]
    h.cli("policy-delete", name, check=True)
    assert h.cli("policy-show", name).returncode == 3
    assert h.cli("policy-delete", name).returncode == 3
    # labels and protection of a real domain
    dom = listed_domain(cluster, h1, "cli-lbl")
    assert json.loads(h.cli("domain-label", dom.name, "env=prod", "tier=web", "--json",
                            check=True).stdout) == {"env": "prod", "tier": "web"}
    assert h.cli("domain-label", dom.name, "--remove", "env", check=True).stdout.strip() == \
        "tier=web"
    assert h.cli("domain-label", dom.name, "bad key=x").returncode == 2
    assert h.cli("snapshot-protect", "-n", "nope", dom.name).returncode == 3
    client = cluster.client()
    succeeded(client, client.create(dom.name, name="keep-me", disk_only=True))
    assert json.loads(h.cli("snapshot-protect", "-n", "keep-me", dom.name, "--json",
                            check=True).stdout)["protected"]
    h.cli("snapshot-unprotect", "-n", "keep-me", dom.name, check=True)
    assert h.cli("snapshot-unprotect", "-n", "keep-me", dom.name).returncode == 3


def test_fanout_skips_a_down_host_a_domain_still_going_and_an_overlapping_run(
        cluster: Cluster) -> None:
    """Skips are recorded with their reason, and nothing is queued for them (real
    Redis and broker; no host has to live for this)."""
    import uuid as uuidlib

    from schemas.models import DomainInfo, HostInventory, JobRecord

    client = cluster.client()
    store = client.store
    down, up = f"down-{cluster.suffix}", f"up-{cluster.suffix}"
    d1, d2 = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    store.publish_inventory(HostInventory(host=down, driver="qemu", published_at=time.time(),
                                          domains=[DomainInfo(uuid=d1, name=f"d1-{down}",
                                                              state="running")]),
                            5, alive=False)
    store.publish_inventory(HostInventory(host=up, driver="qemu", published_at=time.time(),
                                          domains=[DomainInfo(uuid=d2, name=f"d2-{up}",
                                                              state="running")]), 60)
    pst = PolicyStore(store)
    pol = pst.create({"name": f"skip-{cluster.suffix}", "interval_s": 60,
                      "select": {"hosts": [down, up]}, "disk_only": True})
    going = str(uuidlib.uuid4())
    store.create_job(JobRecord(job_id=going, op="create", domain=d2, host=up, name="x",
                               submitted_at=time.time(), state="running"))
    pst.set_last_job(pol.name, d2, going)
    ops = QueueOps(store, make_app(cluster.settings()))
    try:
        run = run_policy(pst, ops, pol)
        reasons = {d.domain: (d.outcome, d.reason) for d in run.domains}
        assert reasons[d1] == ("skipped", f"host {down} is down")
        assert reasons[d2] == ("skipped", f"previous run (job {going}) is still going")
        assert not cluster.redis.llen(f"domsnap.host.{up}")  # nothing queued
        # a firing while another run holds the policy's slot skips every domain
        assert pst.begin_run(pol.name, "other-run", 30) is None
        run = run_policy(pst, ops, pol)
        assert {d.reason for d in run.domains} == {"previous run other-run is still going"}
        assert [r.run_id for r in pst.runs(pol.name)][0] == run.run_id  # recorded
    finally:
        pst.delete(pol.name)
