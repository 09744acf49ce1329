"""The whole cycle through the queue on one real domain: create, list, revert, delete."""

from __future__ import annotations

import json
import stat

import pytest

from tests.integration.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def test_create_list_revert_delete(cluster: Cluster, h1: str) -> None:
    dom = cluster.create_domain(h1, "cycle", guest=False)
    cluster.wait_inventory(dom)
    client = cluster.client()
    job = client.wait(client.create(dom.name, name="one"), timeout=120)
    assert job.state == "succeeded", job.error
    rec = client.snapshot(dom.name, "one")
    assert rec.memory_file and rec.pause_ms is not None
    mode = stat.S_IMODE((dom.host.snapshots / dom.uuid / "one.save").stat().st_mode)
    assert mode == 0o600
    out = dom.host.cli("snapshot-list", "--json", dom.name, check=True)
    assert [s["name"] for s in json.loads(out.stdout)["snapshots"]] == ["one"]
    job = client.wait(client.revert(dom.name, "one"), timeout=120)
    assert job.state == "succeeded", job.error
    job = client.wait(client.delete(dom.name, "one"), timeout=120)
    assert job.state == "succeeded", job.error
    assert client.snapshots(dom.name) == []
