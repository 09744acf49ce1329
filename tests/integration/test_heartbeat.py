"""A slow inventory listing does not make a host look dead (issue 9's lab finding: a
busy nested dom0's `xl list -l` outlasted the host TTL, and every request for every
domain of the host was refused "no live worker"). Liveness is renewed apart from the
listing, but only while the listing is healthy: one that hangs past the stall limit,
or fails, still takes the host out of routing, and it comes back once listing works.
"""

from __future__ import annotations

import time

import pytest

from domsnap.errors import HostUnavailable
from tests.integration.cluster import Cluster, listed_domain, succeeded
from tests.xlstandin.standin import SLOW_LIST

pytestmark = [pytest.mark.integration, pytest.mark.vm]

TTL_S, STALL_S = 4, 12  # the cluster's hosts renew every 1 s with a 4 s TTL


def _wait_alive(cluster: Cluster, host: str, want: bool, timeout: float) -> float:
    t0 = time.monotonic()
    store = cluster.client().store
    while store.host_alive(host) != want:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{host}: alive is not {want} after {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - t0


def test_a_slow_listing_keeps_the_host_alive_and_a_stalled_one_does_not(
        cluster: Cluster) -> None:
    name = f"xhb-{cluster.suffix}"
    h = cluster.start_worker(name, driver="xl", DOMSNAP_INVENTORY_STALL_S=str(STALL_S))
    dom = listed_domain(cluster, name, "hb", disks=1)
    client = cluster.client()
    hook = h.xen / SLOW_LIST

    # listing takes twice the TTL: the host stays alive throughout, and works
    hook.write_text(str(2 * TTL_S))
    store = client.store
    deadline = time.monotonic() + 3 * TTL_S
    while time.monotonic() < deadline:
        assert store.host_alive(name), "the host looked dead while it was listing"
        time.sleep(0.2)
    job = client.create(dom.uuid, name="during-slow-list", disk_only=True)
    assert succeeded(client, job).state == "succeeded"

    # listing hangs past the stall limit: the host leaves routing ...
    hook.write_text(str(STALL_S + 3 * TTL_S))
    _wait_alive(cluster, name, False, timeout=2 * TTL_S + STALL_S + 2 * TTL_S + 10)
    with pytest.raises(HostUnavailable):
        client.resolve(dom.uuid)
    # ... and comes back once a listing completes again
    hook.unlink()
    _wait_alive(cluster, name, True, timeout=STALL_S + 3 * TTL_S + 30)
    assert client.resolve(dom.uuid)[0] == name
