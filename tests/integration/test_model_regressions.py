"""Regression tests for defects the model-based test (test_model.py) found: each is the
shrunk sequence of steps it failed on, replayed through the same machine, so every
step is followed by the model's full check.

Each was found by the model, routed and fixed; its test keeps it fixed:

* model-1 (workers/engine/delete.py, plan_delete): deleting an internal snapshot whose
  image is an overlay domsnap made at an earlier revert, and that the domain no longer
  uses (a later revert moved it on), removed the internal snapshot but left the image:
  an orphan under the snapshot dir that no record or config named, holding the
  abandoned branch's data. Sequence: external snapshot S0; revert S0 (new overlay R1);
  internal snapshot S1 (lives in R1); revert S0 again (overlay R2; R1 kept, S1 needs
  it); delete S1 -> R1 stayed forever. Now the image goes with its last snapshot.

* model-2 (workers/engine/delete.py, _plan_external): deleting an external snapshot S1
  whose frozen image is the overlay of another snapshot S0 (S0 external, then S1
  external, then a revert to S0 moved the domain onto a new overlay) removed that frozen
  image, and S0's record still named it as its overlay (Redis, sidecar and fsck
  disagreed with the disk). Now records whose overlay a delete removes stop naming it.
"""

from __future__ import annotations

import pytest

from tests.integration.cluster import Cluster
from tests.integration.test_model import DomsnapMachine

pytestmark = [pytest.mark.integration, pytest.mark.vm]


def machine(cluster: Cluster, host: str) -> DomsnapMachine:
    cls = type("Machine", (DomsnapMachine,), {"cluster": cluster, "host": host, "counts": {}})
    m: DomsnapMachine = cls()
    return m


def test_delete_internal_snapshot_in_abandoned_revert_overlay(cluster: Cluster,
                                                              hv_host: str) -> None:
    state = machine(cluster, hv_host)
    try:
        state.boot(kinds=["qcow2"], state="running")
        state.create(memory=False, kind="external", pick=None)  # s0
        state.revert(0, "running")  # overlay R1 on s0's frozen image
        state.create(memory=False, kind="internal", pick=None)  # s1, in R1
        state.revert(0, "running")  # overlay R2; R1 stays (s1 lives in it)
        state.matches_model()
        state.delete(1)  # s1: R1 must go with it
        state.matches_model()
    finally:
        state.teardown()


def test_delete_keeps_an_overlay_another_record_names(cluster: Cluster, hv_host: str) -> None:
    state = machine(cluster, hv_host)
    try:
        state.boot(kinds=["qcow2"], state="running")
        state.create(memory=False, kind="external", pick=None)  # s0: orig -> O0
        state.create(memory=False, kind="external", pick=None)  # s1: O0 -> O1
        state.revert(0, "running")  # s0: new overlay on orig; O0 now only s0's overlay
        state.matches_model()
        state.delete(1)  # s1: its frozen image O0 is s0's overlay
        state.matches_model()
    finally:
        state.teardown()
