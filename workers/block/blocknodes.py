"""Pure helpers over QMP block-layer answers, shared by every QMP-speaking driver.

A disk's block node is found by its image path in ``query-named-block-nodes``,
never by guessing a name (Xen's PV nodes happen to be ``<vdev>-<format>``,
domsnap's own QEMU names them the same way, but after an external snapshot the
top node is whatever the snapshot created).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from domsnap.errors import QMPError, Refused
from workers.drivers.base import DiskOp

_PROTOCOL_DRIVERS = {"file", "host_device", "host_cdrom", "nbd", "iscsi", "rbd"}


def format_nodes_for(nodes: Iterable[dict[str, Any]], path: str) -> list[str]:
    """The names of every format node (qcow2/raw) whose image is ``path``."""
    want = os.path.realpath(path)
    return [str(node["node-name"]) for node in nodes
            if node.get("drv") not in _PROTOCOL_DRIVERS and node.get("node-name")
            and os.path.realpath(str(node.get("file", ""))) == want]


def format_node_for(nodes: Iterable[dict[str, Any]], path: str) -> str:
    """The node name of the format node (qcow2/raw) whose image is ``path``."""
    nodes = list(nodes)
    found = format_nodes_for(nodes, path)
    if found:
        return found[0]
    raise QMPError(f"no block node has the image {path}", sent="query-named-block-nodes",
                   received=[(n.get("node-name"), n.get("drv"), n.get("file")) for n in nodes])


def snapshot_actions(nodes: list[dict[str, Any]], name: str,
                     disks: list[DiskOp]) -> list[dict[str, Any]]:
    """The ``transaction`` actions that snapshot ``disks`` atomically."""
    actions: list[dict[str, Any]] = []
    for op in disks:
        node = format_node_for(nodes, op.path)
        if op.type == "internal":
            actions.append({"type": "blockdev-snapshot-internal-sync",
                            "data": {"device": node, "name": name}})
        else:
            assert op.target is not None
            actions.append({"type": "blockdev-snapshot-sync",
                            "data": {"node-name": node, "snapshot-file": op.target,
                                     "snapshot-node-name": overlay_node_name(op.vdev, name),
                                     "format": "qcow2", "mode": "absolute-paths"}})
    return actions


def overlay_node_name(vdev: str, name: str) -> str:
    """A QMP node name (letters, digits, ``- . _``; at most 31 chars) for a new overlay,
    unique per snapshot name: a readable prefix plus a hash of the whole name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"ds-{vdev[:8]}-{safe[:10]}-{digest}"


def served_strategies(nodes: list[dict[str, Any]], ops: list[DiskOp],
                      out: list[str]) -> list[str]:
    """``out`` (a strategy per op) checked against the device model's block nodes: a
    ``qmp`` disk the device model does not serve is taken offline in a save/restore
    window instead; an image open in two nodes (an HVM domain's emulated drive beside
    its PV one) is refused, since a snapshot through one node would corrupt what the
    other caches."""
    checked = []
    for op, strategy in zip(ops, out, strict=True):
        if strategy == "qmp":
            found = format_nodes_for(nodes, op.path)
            if len(found) > 1:
                raise Refused(
                    f"disk {op.vdev}: {op.path} is open in {len(found)} block nodes of the "
                    f"device model ({', '.join(found)}), e.g. an HVM domain's emulated drive "
                    "beside its PV one: not supported (shut the domain off, or snapshot "
                    "after the guest's PV drivers unplugged the emulated one)")
            strategy = "qmp" if found else "save-restore"
        checked.append(strategy)
    return checked
