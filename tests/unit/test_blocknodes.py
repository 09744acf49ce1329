"""Block-node lookup and snapshot transaction actions, against real QMP answers
captured from Xen 4.17's device-model QEMU 7.2 (reference/xl-4.17-captures.txt)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from domsnap.errors import QMPError
from schemas.models import SNAPSHOT_NAME_RE
from workers.block.blocknodes import format_node_for, overlay_node_name, snapshot_actions
from workers.drivers.base import DiskOp

# NODES lines ([node-name, drv, file] of query-named-block-nodes), verbatim from the capture.
NODES_BEFORE = ('[["xvda-qcow2", "qcow2", "/var/lib/xen/images/d0.qcow2"], '
                '["#block061", "file", "/var/lib/xen/images/d0.qcow2"]]')
NODES_AFTER_EXTERNAL = ('[["ext1", "qcow2", "/var/lib/xen/images/d0.ext1.qcow2"], '
                        '["#block437", "file", "/var/lib/xen/images/d0.ext1.qcow2"], '
                        '["xvda-qcow2", "qcow2", "/var/lib/xen/images/d0.qcow2"], '
                        '["#block061", "file", "/var/lib/xen/images/d0.qcow2"]]')
# Commands sent in the capture, verbatim (each answered {"return": {}}).
CAPTURED_TRANSACTION = ('{"actions":[{"type":"blockdev-snapshot-internal-sync",'
                        '"data":{"device":"xvda-qcow2","name":"snap2"}}]}')
CAPTURED_EXTERNAL = ('{"node-name":"xvda-qcow2","snapshot-file":'
                     '"/var/lib/xen/images/d0.ext1.qcow2","snapshot-node-name":"ext1",'
                     '"format":"qcow2"}')

D0 = "/var/lib/xen/images/d0.qcow2"
EXT1 = "/var/lib/xen/images/d0.ext1.qcow2"

# QAPI BlockdevSnapshotSync members (QEMU 7.2); mode defaults to absolute-paths.
BLOCKDEV_SNAPSHOT_SYNC_MEMBERS = {"device", "node-name", "snapshot-file", "snapshot-node-name",
                                  "format", "mode"}
QEMU_NODE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,30}$")  # id_wellformed, < 32 bytes


def nodes(line: str) -> list[dict[str, Any]]:
    return [{"node-name": n, "drv": d, "file": f} for n, d, f in json.loads(line)]


def test_capture_parses() -> None:
    assert [n["node-name"] for n in nodes(NODES_AFTER_EXTERNAL)] == [
        "ext1", "#block437", "xvda-qcow2", "#block061"]


def test_format_node_not_file_node() -> None:
    assert format_node_for(nodes(NODES_BEFORE), D0) == "xvda-qcow2"
    # the protocol node first in the list must still be skipped
    assert format_node_for(list(reversed(nodes(NODES_BEFORE))), D0) == "xvda-qcow2"


def test_format_node_after_external_snapshot() -> None:
    after = nodes(NODES_AFTER_EXTERNAL)
    assert format_node_for(after, EXT1) == "ext1"
    assert format_node_for(after, D0) == "xvda-qcow2"
    assert format_node_for(list(reversed(after)), EXT1) == "ext1"


def test_format_node_resolves_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "d0.qcow2"
    real.write_bytes(b"QFI\xfb")
    link = tmp_path / "disk-link.qcow2"
    link.symlink_to(real)
    found = [{"node-name": "xvda-qcow2", "drv": "qcow2", "file": str(real)},
             {"node-name": "#block1", "drv": "file", "file": str(real)}]
    assert format_node_for(found, str(link)) == "xvda-qcow2"


def test_format_node_missing_names_path_and_lists_nodes() -> None:
    after = nodes(NODES_AFTER_EXTERNAL)
    with pytest.raises(QMPError) as info:
        format_node_for(after, "/var/lib/xen/images/other.qcow2")
    err = info.value
    assert "/var/lib/xen/images/other.qcow2" in str(err)
    assert err.sent == "query-named-block-nodes"
    assert err.received == [(n, d, f) for n, d, f in json.loads(NODES_AFTER_EXTERNAL)]
    assert err.details["received"] == err.received


def test_only_protocol_node_matches_is_an_error() -> None:
    only_file = [{"node-name": "#block061", "drv": "file", "file": D0}]
    with pytest.raises(QMPError):
        format_node_for(only_file, D0)


def test_internal_action_matches_capture() -> None:
    op = DiskOp(vdev="xvda", path=D0, format="qcow2", type="internal")
    actions = snapshot_actions(nodes(NODES_BEFORE), "snap2", [op])
    assert {"actions": actions} == json.loads(CAPTURED_TRANSACTION)


def test_external_action_matches_capture() -> None:
    op = DiskOp(vdev="xvda", path=D0, format="qcow2", type="external", target=EXT1)
    [action] = snapshot_actions(nodes(NODES_BEFORE), "ext1", [op])
    assert action["type"] == "blockdev-snapshot-sync"
    data = action["data"]
    captured = json.loads(CAPTURED_EXTERNAL)
    assert set(data) <= BLOCKDEV_SNAPSHOT_SYNC_MEMBERS
    assert "device" not in data  # a node name, not a device (Xen's device is "")
    # identical to the captured command, except domsnap's own overlay node name and the
    # explicit (default) mode
    for key in ("node-name", "snapshot-file", "format"):
        assert data[key] == captured[key]
    assert data["mode"] == "absolute-paths"
    assert data["snapshot-node-name"] == overlay_node_name("xvda", "ext1")


def test_mixed_disks_in_one_transaction_after_external() -> None:
    after = nodes(NODES_AFTER_EXTERNAL)
    ops = [DiskOp(vdev="xvda", path=EXT1, format="qcow2", type="internal"),
           DiskOp(vdev="xvdb", path=D0, format="qcow2", type="external",
                  target="/var/lib/xen/images/d0.ext2.qcow2")]
    actions = snapshot_actions(after, "s3", ops)
    assert actions == [
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": "ext1", "name": "s3"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"node-name": "xvda-qcow2", "snapshot-file": "/var/lib/xen/images/d0.ext2.qcow2",
                  "snapshot-node-name": overlay_node_name("xvdb", "s3"), "format": "qcow2",
                  "mode": "absolute-paths"}},
    ]


def test_snapshot_actions_unknown_disk_raises() -> None:
    op = DiskOp(vdev="xvdb", path="/img/missing.qcow2", format="qcow2", type="internal")
    with pytest.raises(QMPError, match="/img/missing.qcow2"):
        snapshot_actions(nodes(NODES_BEFORE), "s", [op])


def test_snapshot_actions_empty() -> None:
    assert snapshot_actions(nodes(NODES_BEFORE), "s", []) == []


# every character a snapshot name may contain, and the longest names
NAMES = ["ext1", "a", "x" * 128, "nightly-2026-11-25T01:00:00", "v1.2_rc:3", "...", ".a",
         "A-Z_a-z.0-9:" * 10]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("vdev", ["xvda", "hda", "sdb", "xvdz9", "xvdaaaaa1234"])
def test_overlay_node_name_is_a_valid_qemu_node_name(vdev: str, name: str) -> None:
    assert SNAPSHOT_NAME_RE.fullmatch(name)
    node = overlay_node_name(vdev, name)
    assert len(node) <= 31
    assert QEMU_NODE_NAME.fullmatch(node), node
    assert not node.startswith("#")  # '#' is QEMU's prefix for generated names


def test_overlay_node_name_is_stable_and_readable() -> None:
    assert overlay_node_name("xvda", "ext1") == overlay_node_name("xvda", "ext1")
    assert overlay_node_name("xvda", "ext1").startswith("ds-xvda-")
    assert overlay_node_name("xvda", "s") != overlay_node_name("xvdb", "s")


@pytest.mark.parametrize(("a", "b"), [
    ("backup-daily-2026-11-25T01:00:00", "backup-daily-2026-11-25T02:00:00"),
    ("a.b", "a_b"),
])
def test_overlay_node_names_differ_for_different_snapshots(a: str, b: str) -> None:
    """Two external snapshots of one disk put two overlays in the same chain: QEMU
    refuses a new node whose name is already in use ("Duplicate nodes with node-name"),
    so distinct snapshot names of the same disk must give distinct node names."""
    assert overlay_node_name("xvda", a) != overlay_node_name("xvda", b)
