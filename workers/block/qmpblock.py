"""Block-layer work over one open QMP connection, shared by every driver whose
disks live in a QEMU (domsnap's own QEMU, Xen's device model).

Callers own the connection: connect, call these, disconnect at once (a QMP
socket serves one client; on Xen libxl needs it too). Nodes are found by image
path (:mod:`workers.block.blocknodes`), never by guessing a name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from domsnap.errors import DomsnapError, OperationTimeout, QMPError
from workers.block.blocknodes import format_node_for
from workers.block.qmp import QMPClient
from workers.drivers.base import DiskOp
from workers.hostio import faults

JOB_PREFIX = "ds-commit-"


def transaction(q: QMPClient, actions: list[dict[str, Any]]) -> float:
    """Every disk in one atomic transaction (all or none); returns its time in ms."""
    t0 = time.monotonic()
    if actions:
        q.execute("transaction", {"actions": actions})
    return round((time.monotonic() - t0) * 1000, 3)


def undo_actions(q: QMPClient, actions: list[dict[str, Any]], *, timeout: float) -> None:
    """Best effort: take back what a finished ``transaction`` did (error paths)."""
    for act in actions:
        data = act["data"]
        try:
            if act["type"] == "blockdev-snapshot-internal-sync":
                q.execute("blockdev-snapshot-delete-internal-sync",
                          {"device": data["device"], "name": data["name"]})
            else:
                commit_active(q, data["snapshot-node-name"], timeout=timeout)
                os.unlink(data["snapshot-file"])
        except (DomsnapError, OSError):
            continue


def undo_disks(q: QMPClient, *, name: str, disks: list[DiskOp], timeout: float) -> None:
    """Remove the disk snapshots ``name`` of ``disks`` from a running domain: internal
    ones are deleted, external overlays are merged back (no write is lost) and removed."""
    nodes = q.execute("query-named-block-nodes")
    for op in disks:
        if op.type == "internal":
            q.execute("blockdev-snapshot-delete-internal-sync",
                      {"device": format_node_for(nodes, op.path), "name": name})
        else:
            assert op.target is not None
            commit_active(q, format_node_for(nodes, op.target), timeout=timeout)
            drop_orphans(q, nodes, op.target)
            Path(op.target).unlink(missing_ok=True)


def delete_internal(q: QMPClient, *, name: str, path: str) -> None:
    node = format_node_for(q.execute("query-named-block-nodes"), path)
    q.execute("blockdev-snapshot-delete-internal-sync", {"device": node, "name": name})


def settle_jobs(q: QMPClient, *, timeout: float) -> list[str]:
    """Finish the merges an earlier attempt left in QEMU (a worker killed mid-commit):
    a job that is ``ready`` is completed (its data is in the base already; completing
    pivots the device onto the base), a running one is waited for, a concluded one is
    dismissed. Until then QEMU refuses other block work ("Need a root block node")."""
    done = []
    for j in q.execute("query-jobs"):
        job = str(j.get("id", ""))
        if job.startswith(JOB_PREFIX):
            wait_job(q, job, ready=True, timeout=timeout, dismiss_errors=True)
            done.append(job)
    return done


def in_use(q: QMPClient, path: str) -> bool:
    """Whether some device's chain holds the image ``path``."""
    try:
        root_of(q, path)
        return True
    except QMPError:
        return False


def commit(q: QMPClient, *, top: str, base: str, timeout: float) -> None:
    """Merge image ``top`` into its backing ``base`` while the guest runs. Safe to run
    again: a merge an earlier attempt left in QEMU is finished first, and a ``top`` that
    no device uses any more was merged already."""
    settle_jobs(q, timeout=timeout)
    nodes = q.execute("query-named-block-nodes")
    if not in_use(q, top):
        drop_orphans(q, nodes, top)
        return
    top_node = format_node_for(nodes, top)
    base_node = format_node_for(nodes, base)
    root = root_of(q, top)
    if root == top_node:
        commit_active(q, top_node, base_node, timeout=timeout)
    else:
        job = _job_id()
        q.execute("block-commit", {"job-id": job, "device": root, "top-node": top_node,
                                   "base-node": base_node, "auto-dismiss": False})
        wait_job(q, job, ready=False, timeout=timeout)
    drop_orphans(q, nodes, top)


def drop_orphans(q: QMPClient, nodes: list[dict[str, Any]], path: str) -> None:
    """Release the nodes of an image that left the graph.

    Nodes created with -blockdev (and Xen's qdisk nodes) are owned by the monitor
    and outlive their use; such a node would stay a parent of the image below it,
    which then is no longer a root node and refuses internal-snapshot deletion
    ("Need a root block node").
    """
    want = os.path.realpath(path)
    mine = [n for n in nodes if os.path.realpath(str(n.get("file", ""))) == want]
    # format nodes first: a protocol node cannot go while its format node holds it
    for node in sorted(mine, key=lambda n: n.get("drv") in ("file", "host_device")):
        try:
            q.execute("blockdev-del", {"node-name": node["node-name"]})
        except QMPError:
            pass  # not monitor-owned (freed with the graph) or still in use


def root_of(q: QMPClient, path: str) -> str:
    """The root (device) node of the chain that holds the image ``path``."""
    want = os.path.realpath(path)
    for dev in q.execute("query-block"):
        ins = dev.get("inserted") or {}
        image: dict[str, Any] | None = ins.get("image")
        while image is not None:
            if os.path.realpath(str(image.get("filename", ""))) == want:
                return str(ins["node-name"])
            image = image.get("backing-image")
    raise QMPError(f"no device uses the image {path}", sent="query-block", received=None)


def commit_active(q: QMPClient, top_node: str, base_node: str | None = None, *,
                  timeout: float) -> None:
    job = _job_id()
    args: dict[str, Any] = {"job-id": job, "device": top_node, "auto-dismiss": False}
    if base_node:
        args["base-node"] = base_node
    q.execute("block-commit", args)
    wait_job(q, job, ready=True, timeout=timeout)


def _job_id() -> str:
    return f"{JOB_PREFIX}{int(time.time() * 1000) % 10**9}"


def wait_job(q: QMPClient, job: str, *, ready: bool, timeout: float,
             dismiss_errors: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["id"]: j for j in q.execute("query-jobs")}
        j = jobs.get(job)
        if j is None:
            raise QMPError(f"block job {job} vanished", sent="query-jobs", received=jobs)
        st = j.get("status")
        if ready and st == "ready":
            faults.point("commit-ready")
            q.execute("job-complete", {"id": job})
            ready = False
        elif st == "paused":
            q.execute("job-resume", {"id": job})
        elif st == "concluded":
            q.execute("job-dismiss", {"id": job})
            if j.get("error") and not dismiss_errors:
                raise QMPError(f"block job {job} failed: {j['error']}", sent=job, received=j)
            return
        if time.monotonic() > deadline:
            raise OperationTimeout(f"block job {job} did not finish", job=job)
        time.sleep(0.02)
