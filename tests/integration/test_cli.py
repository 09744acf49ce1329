"""The operator's view: every command has --help, read commands have --json,
long work shows progress, errors are one line with a meaningful exit code."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.cluster import Cluster, run_cli
from tests.integration.diskdata import qmp

pytestmark = [pytest.mark.integration, pytest.mark.vm]

COMMANDS = ["snapshot-create", "snapshot-list", "snapshot-revert", "snapshot-delete", "job",
            "hosts", "worker", "domain-create", "domain-start", "domain-list",
            "domain-destroy", "domain-pause", "domain-unpause", "domain-config"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cluster: Cluster, command: str) -> None:
    proc = run_cli(cluster.env_for("nohost"), command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ") and command in proc.stdout
    assert len(proc.stdout.splitlines()) > 4


def test_cli_cycle_with_progress_and_json(cluster: Cluster, h1: str) -> None:
    dom = cluster.create_domain(h1, "clidom", guest=False)
    cluster.wait_inventory(dom)
    # create: job id and progress on stderr, the result on stdout
    proc = dom.host.cli("snapshot-create", "-n", "c1", "-d", "from the cli", dom.name)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^job [0-9a-f-]{36}$", proc.stderr, re.M)
    assert "[admitted]" in proc.stderr and "[resumed]" in proc.stderr
    assert re.search(r"snapshot c1 created, paused [0-9.]+ ms", proc.stdout)
    assert "vda: internal" in proc.stdout and "vdb: internal" in proc.stdout
    # --no-wait prints only the job id; `job --wait --json` gives the result
    proc = dom.host.cli("snapshot-create", "--no-wait", "--disk-only", "-n", "c2", dom.name)
    assert proc.returncode == 0
    job_id = proc.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id)
    job = json.loads(dom.host.cli("job", "--wait", "--json", job_id, check=True).stdout)
    assert job["state"] == "succeeded" and job["result"]["disk_only"] is True
    # list: short, long, one, json
    short = dom.host.cli("snapshot-list", dom.name, check=True).stdout.splitlines()
    assert short[0].split() == ["Name", "Creation", "Time", "State", "Disk-only"]
    assert [line.split()[0] for line in short[1:]] == ["c1", "c2"]
    assert short[2].split()[1] == "*"  # c2 is current
    long_ = dom.host.cli("snapshot-list", "-l", "-n", "c1", dom.name, check=True).stdout
    assert "description: from the cli" in long_ and "disk vda: internal qcow2" in long_
    data = json.loads(dom.host.cli("snapshot-list", "--json", dom.name, check=True).stdout)
    assert data["current"] == "c2"
    assert [s["name"] for s in data["snapshots"]] == ["c1", "c2"]
    assert data["snapshots"][1]["parent"] == "c1"
    # revert and delete, --json
    out = json.loads(dom.host.cli("snapshot-revert", "--json", "-n", "c1", dom.name,
                                  check=True).stdout)
    assert out["state"] == "succeeded" and out["result"]["state"] == "running"
    for name in ("c2", "c1"):
        out = json.loads(dom.host.cli("snapshot-delete", "--json", "-n", name, dom.name,
                                      check=True).stdout)
        assert out["state"] == "succeeded"
    assert json.loads(dom.host.cli("snapshot-list", "--json", dom.name,
                                   check=True).stdout)["snapshots"] == []


def test_errors_are_one_line_with_exit_codes(cluster: Cluster, h1: str) -> None:
    env = cluster.env_for(h1)
    cases = [
        (["snapshot-list", "nosuch"], 3, "unknown domain 'nosuch'"),
        (["snapshot-revert", "nosuch"], 2, "Missing option '-n'"),
        (["job", "00000000-0000-4000-8000-000000000000"], 3, "no job"),
        (["domain-create", "/nonexistent.cfg"], 2, "cannot read file"),
    ]
    for args, code, text in cases:
        proc = run_cli(env, *args)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr)
        assert text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_dom0_operator_commands(cluster: Cluster, x1: str) -> None:
    """On a dom0 xl creates domains; domsnap lists what xl runs, prints the config it
    keeps (naming the images after a snapshot), and refuses what only its own
    toolstack has."""
    dom = cluster.create_domain(x1, "cli-dom0", guest=False)
    cluster.wait_inventory(dom)
    listed = json.loads(dom.host.cli("domain-list", "--json", check=True).stdout)
    mine = next(d for d in listed if d["uuid"] == dom.uuid)
    assert mine["state"] == "running" and mine["domid"] is not None
    assert [d["backend"] for d in mine["disks"]] == ["qdisk", "qdisk"]
    hosts = json.loads(dom.host.cli("hosts", "--json", check=True).stdout)
    assert any(h["host"] == x1 and h["driver"] == "xl" for h in hosts)
    dom.host.cli("snapshot-create", "--type", "external", "-n", "e1", dom.name, check=True)
    cfg = dom.host.cli("domain-config", dom.name, check=True).stdout
    for vdev in dom.vdevs[:2]:
        assert f"target={dom.active(vdev)}" in cfg
        assert dom.active(vdev).endswith(f"/e1.{vdev}.qcow2")
    proc = dom.host.cli("domain-create", str(dom.host.root / "cli-dom0-xl.cfg"))
    assert proc.returncode == 2 and "qemu driver" in proc.stderr
    dom.host.cli("domain-pause", dom.name, check=True)
    assert dom.state() == "paused"
    dom.host.cli("domain-unpause", dom.name, check=True)
    dom.host.cli("domain-destroy", dom.name, check=True)
    assert dom.state() == "shutoff"
    dom.host.cli("domain-start", dom.name, check=True)  # from the config domsnap keeps
    assert dom.state() == "running"
    files = {n["file"] for n in qmp(dom, "query-named-block-nodes")}
    assert dom.active(dom.vdevs[0]) in files  # it runs on the overlay, not the old image
