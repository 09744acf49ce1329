"""The broker is pluggable through kombu: the cycle with RabbitMQ as the broker and
Redis as the result backend and store."""

from __future__ import annotations

import os

import pytest

from tests.integration.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.vm]

AMQP = os.environ.get("DOMSNAP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def test_cycle_over_rabbitmq(cluster: Cluster) -> None:
    name = f"h4-{cluster.suffix}"
    cluster.start_worker(name, DOMSNAP_BROKER_URL=AMQP)
    dom = cluster.create_domain(name, "rabbit", guest=False, disks=2)
    cluster.wait_inventory(dom)
    client = cluster.client(broker_url=AMQP)
    job = client.wait(client.create(dom.name, name="amqp1"), timeout=120)
    assert job.state == "succeeded", job.error
    # offline path: the chord of per-disk tasks also works over AMQP
    dom.host.cli("domain-destroy", dom.name, check=True)
    job = client.wait(client.create(dom.name, name="amqp2", disk_only=True), timeout=120)
    assert job.state == "succeeded", job.error
    job = client.wait(client.revert(dom.name, "amqp1"), timeout=120)
    assert job.state == "succeeded", job.error
    for snap in ("amqp2", "amqp1"):
        job = client.wait(client.delete(dom.name, snap), timeout=120)
        assert job.state == "succeeded", job.error
    assert client.snapshots(dom.name) == []
