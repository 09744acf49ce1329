"""The live-snapshot receiver's disk transaction against a real QEMU: at the libxl END
record it takes the disk snapshot through QMP (the one transaction the worker
computed) and only then closes the reply channel; a transaction that fails is
reported and the memory file removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_qmp import StartQemu, disk, start_qemu  # noqa: F401 (fixtures)
from tests.unit.test_xlreceive import request, run
from tests.unit.test_xlstream import stream
from workers.block.qemu_img import QemuImg
from workers.drivers.xlreceive import BANNER, read_report
from workers.hostio.runner import SubprocessRunner

pytestmark = pytest.mark.integration


def test_the_transaction_runs_at_the_end_of_the_stream(
        tmp_path: Path, start_qemu: StartQemu, disk: Path) -> None:  # noqa: F811
    vm = start_qemu()
    actions = [{"type": "blockdev-snapshot-internal-sync",
                "data": {"device": "vda-qcow2", "name": "s1"}}]
    code, out, err = run(request(tmp_path, qmp_socket=str(vm.sock), actions=actions),
                         stream([[0, 1], [1]]))
    assert code == 0, err
    assert out == BANNER
    rep = read_report(tmp_path / "report.json")
    assert rep is not None and rep.ok and rep.transaction_done
    assert rep.transaction_ms is not None and rep.times["end"] <= rep.times["transaction"]
    with vm.client() as q:
        names = [s["name"] for node in q.execute("query-named-block-nodes")
                 if node["node-name"] == "vda-qcow2"
                 for s in node.get("image", {}).get("snapshots", [])]
    assert names == ["s1"]
    vm.stop()
    assert QemuImg(SubprocessRunner()).snapshot_list(disk) == ["s1"]  # on disk, QEMU gone


def test_a_failed_transaction_removes_the_stream(
        tmp_path: Path, start_qemu: StartQemu) -> None:  # noqa: F811
    vm = start_qemu()
    actions = [{"type": "blockdev-snapshot-internal-sync",
                "data": {"device": "no-such-node", "name": "s1"}}]
    code, out, err = run(request(tmp_path, qmp_socket=str(vm.sock), actions=actions),
                         stream([[0]]))
    assert code == 1 and out == BANNER
    rep = read_report(tmp_path / "report.json")
    assert rep is not None and not rep.ok and rep.end_received and not rep.transaction_done
    assert "no-such-node" in rep.error or "not found" in rep.error.lower(), rep.error
    assert not (tmp_path / "snap" / "s1.save").exists()
