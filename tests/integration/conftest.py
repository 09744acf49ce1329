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
        c.stop_workers(list(c.hosts))
        c.destroy_all()
        c.cleanup_redis()


# What a test (or a module) started is ended when it is done: left running to the
# session's end, idle workers (each with a heartbeat every second; on an xl host that
# is an `xl list` asking every domain's QEMU) and some 80 idle QEMUs kept a 2-core host
# at load 20, and everything ran slower. Fixtures of a wider scope are set up before
# those of a narrower one, so a module's or the session's hosts and domains are not
# counted as a test's; the session's hosts are in ``cluster.keep``.


def _ends_what_it_started(request: pytest.FixtureRequest) -> Iterator[None]:
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    domains, hosts = len(cluster.domains), len(cluster.first_started)
    yield
    for dom in cluster.domains[domains:]:
        cluster.retire(dom)
    del cluster.domains[domains:]
    cluster.stop_workers([n for n in cluster.first_started[hosts:] if n not in cluster.keep])
    del cluster.first_started[hosts:]


@pytest.fixture(autouse=True, scope="module")
def _module_ends_what_it_started(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from _ends_what_it_started(request)


@pytest.fixture(autouse=True)
def _test_ends_what_it_started(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from _ends_what_it_started(request)


@pytest.fixture(scope="session")
def h1(cluster: Cluster) -> str:
    cluster.keep.add(f"h1-{cluster.suffix}")
    return cluster.start_worker(f"h1-{cluster.suffix}").name


@pytest.fixture(scope="session")
def h2(cluster: Cluster) -> str:
    cluster.keep.add(f"h2-{cluster.suffix}")
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
    cluster.keep.add(f"x1-{cluster.suffix}")
    return cluster.start_worker(f"x1-{cluster.suffix}", driver="xl").name
