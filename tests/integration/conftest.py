"""Fixtures for the integration suite: one fleet per test session."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base: Path = tmp_path_factory.mktemp("fleet")
    c = Cluster(base, suffix=uuidlib.uuid4().hex[:6])
    c.redis.ping()
    try:
        yield c
    finally:
        for name in list(c.hosts):
            c.stop_worker(name)
        c.destroy_all()
        c.cleanup_redis()


@pytest.fixture(scope="session")
def h1(cluster: Cluster) -> str:
    return cluster.start_worker(f"h1-{cluster.suffix}").name


@pytest.fixture(scope="session")
def h2(cluster: Cluster) -> str:
    return cluster.start_worker(f"h2-{cluster.suffix}").name


@pytest.fixture(scope="session", params=["qemu", "xl"])
def hv_host(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """A host of each driver: the end-to-end suite runs once per hypervisor driver
    (qemu: domsnap's own QEMU; xl: a dom0, here the stand-in xl over real QEMU)."""
    name: str = request.getfixturevalue("h1" if request.param == "qemu" else "x1")
    return name


@pytest.fixture(scope="session")
def x1(cluster: Cluster) -> str:
    """A dom0 host: the xl driver against the stand-in xl over real QEMU."""
    return cluster.start_worker(f"x1-{cluster.suffix}", driver="xl").name
