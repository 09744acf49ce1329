"""The xl driver's command sequences, through the injected runner: inventory and
registry, the LVM strategy (live under ``xl save -p`` / ``xl pause``, refused on a
non-LVM blkback disk), and a guest that does not suspend.

The LVM strategy is proved for real in the Xen lab (a volume group on a loop
device); here no command runs: RecordingRunner answers as xl and lvm would
(messages as captured on Xen 4.17, see tests/fixtures/xl/README.md).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from domsnap.errors import CommandFailed, Refused, UnknownDomain
from workers.block.lvm import Lvm
from workers.block.qemu_img import QemuImg
from workers.drivers.base import DiskOp
from workers.drivers.xl import XlDriver
from workers.hostio.runner import Call, Completed, RecordingRunner

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "xl"
UUID = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
INVALID = "{} is an invalid domain identifier (rc=-6)\n"


def _entry(domid: int, disks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"domid": domid, "config": {
        "c_info": {"type": "pv", "name": "domu", "uuid": UUID},
        "b_info": {"max_vcpus": 1, "max_memkb": 131072, "target_memkb": 131072,
                   "kernel": "/boot/vmlinuz", "type.pv": {}},
        "disks": disks}}


LVM_DISK = {"pdev_path": "/dev/vg0/domu-disk", "vdev": "xvda", "backend": "phy",
            "format": "raw", "readwrite": 1}
FILE_DISK = {"pdev_path": "/srv/raw.img", "vdev": "xvdb", "backend": "phy", "format": "raw",
             "readwrite": 1}
TABLE = ("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
         "Domain-0                                     0  1024     2     r-----      59.6\n"
         "domu                                         {domid}   128     1     {flags}       6.6\n")


class FakeDom0:
    """Answers xl and lvm like a dom0 with one PV domain ``domu`` on an LVM volume."""

    def __init__(self, disks: list[dict[str, Any]], *, suspend_ok: bool = True) -> None:
        self.disks = disks
        self.domid: int | None = 3
        self.flags = "-b----"
        self.suspend_ok = suspend_ok
        self.snapshots: set[str] = set()
        self.restore_failures = 0
        self.restored_with: list[str] = []  # the config each restore was given
        self.created: list[list[str]] = []
        self.internal: dict[str, set[str]] = {}  # qcow2 image -> internal snapshots
        self.runner = RecordingRunner(self.answer)

    def _qemu_img(self, argv: list[str]) -> Completed | BaseException:
        if argv[1] == "info":
            names = sorted(self.internal.get(argv[-1], set()))
            return RecordingRunner.result(json.dumps(
                {"format": "qcow2", "snapshots": [{"name": n} for n in names]}))
        if argv[1] == "create":
            self.created.append(argv)
            return RecordingRunner.result()
        assert argv[1] == "snapshot", argv
        path = argv[-1].split("file.filename=", 1)[1]
        name = argv[argv.index("-c" if "-c" in argv else "-d") + 1]
        if "-c" in argv:
            self.internal.setdefault(path, set()).add(name)
        else:
            self.internal.get(path, set()).discard(name)
        return RecordingRunner.result()

    def _lvs(self, path: str) -> Completed | BaseException:
        lv = path.rsplit("/", 1)[-1]
        if path == "/dev/vg0/domu-disk":
            return RecordingRunner.result("  vg0|domu-disk|10737418240||/dev/vg0/domu-disk|"
                                          "-wi-ao----\n")
        if lv in self.snapshots:
            return RecordingRunner.result(f"  vg0|{lv}|10737418240|domu-disk|/dev/vg0/{lv}|"
                                          "swi-a-s---\n")
        return CommandFailed(["lvm", "lvs", path], 5,
                             f'  Failed to find logical volume "vg0/{lv}"\n')

    def answer(self, call: Call) -> Completed | BaseException:
        argv = call.argv
        if argv[0] == "qemu-img":
            return self._qemu_img(argv)
        if argv[0] == "lvm":
            if argv[1] == "lvs":
                return self._lvs(argv[-1])
            if argv[1] == "lvcreate":
                self.snapshots.add(argv[argv.index("--name") + 1])
                return RecordingRunner.result()
            if argv[1] == "lvremove":
                self.snapshots.discard(argv[-1].split("/")[-1])
                return RecordingRunner.result()
        assert argv[0] == "xl", argv
        verb, rest = argv[1], argv[2:]
        if verb == "list" and rest[:1] == ["-l"]:
            if self.domid is None:
                if rest[1:]:
                    return CommandFailed(argv, 1, INVALID.format(rest[1]))
                return RecordingRunner.result("[]\n")
            return RecordingRunner.result(json.dumps([_entry(self.domid, self.disks)]))
        if verb == "list":
            if self.domid is None:
                if rest:
                    return CommandFailed(argv, 1, INVALID.format(rest[0]))
                return RecordingRunner.result(TABLE.splitlines(keepends=True)[0])
            return RecordingRunner.result(TABLE.format(domid=self.domid, flags=self.flags))
        if verb == "save":
            if not self.suspend_ok:
                self.flags = "--p---"  # libxl gave up with the guest half-way
                return CommandFailed(argv, 1, "libxl: error: libxl_dom_suspend.c:352:"
                                     "suspend_common_wait_guest_timeout: Domain 3:guest did "
                                     "not suspend, timed out\n")
            Path(rest[-1]).write_bytes(b"Xen saved domain, xl format\n \0 \r" + b"\0" * 96)
            self.flags = "--p---"
            if "-p" not in rest and "-c" not in rest:  # plain save: the domain stops
                self.domid = None
            return RecordingRunner.result()
        if verb == "restore":
            if self.restore_failures:
                self.restore_failures -= 1
                return CommandFailed(argv, 1, "libxl: error: libxl_create.c:1960:"
                                     "domcreate_rebuild_done: cannot (re-)build domain: -3\n")
            self.domid, self.flags = 7, "-b----"
            self.restored_with.append(Path(rest[-2]).read_text())
            return RecordingRunner.result()
        if verb == "pause":
            self.flags = "--p---"
            return RecordingRunner.result()
        if verb == "unpause":
            self.flags = "-b----"
            return RecordingRunner.result()
        raise AssertionError(f"unexpected {argv}")


def _driver(tmp_path: Path, dom0: FakeDom0) -> XlDriver:
    runner = dom0.runner
    return XlDriver(tmp_path / "state", runner, img=QemuImg(runner), lvm=Lvm(runner),
                    xen_run_dir=tmp_path / "run", timeout=42)


def _seen(dom0: FakeDom0) -> list[list[str]]:
    """The commands that did something (lookups left out)."""
    return [a for a in dom0.runner.argvs if a[1] not in ("list", "lvs")]


def test_inventory_registers_domains_and_keeps_them_when_shut_off(tmp_path: Path) -> None:
    dom0 = FakeDom0([LVM_DISK])
    drv = _driver(tmp_path, dom0)
    [info] = drv.list_domains()
    assert (info.uuid, info.name, info.state, info.domid) == (UUID, "domu", "running", 3)
    assert [(d.vdev, d.path, d.backend, d.format) for d in info.disks] == [
        ("xvda", "/dev/vg0/domu-disk", "phy", "raw")]
    assert drv.domain_config(UUID).type == "pv"
    assert dom0.runner.argvs == [["xl", "list", "-l"], ["xl", "list"]]
    assert all(c.timeout > 0 for c in dom0.runner.calls)
    dom0.domid = None  # shut off by its owner: xl forgets it, domsnap does not
    [info] = drv.list_domains()
    assert (info.state, info.domid) == ("shutoff", None)
    assert drv.domain_info(UUID).state == "shutoff"
    with pytest.raises(UnknownDomain):
        drv.domain_info("00000000-0000-0000-0000-000000000001")


def _lvm_op(drv: XlDriver, name: str) -> DiskOp:
    lv = drv.lvm.probe("/dev/vg0/domu-disk")
    assert lv is not None
    return DiskOp(vdev="xvda", path="/dev/vg0/domu-disk", format="raw", type="external",
                  target=drv.lvm.snapshot_path(lv, name), backend="phy", strategy="lvm")


def test_lvm_snapshot_under_xl_save_p(tmp_path: Path) -> None:
    dom0 = FakeDom0([LVM_DISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = _lvm_op(drv, "s1")
    assert drv.disk_strategies(UUID, [op], active=True) == ["lvm"]
    mem = tmp_path / "snaps" / "s1.save"
    dom0.runner.calls.clear()
    res = drv.capture(UUID, name="s1", memory_file=mem, disks=[op],
                      progress=lambda step, msg: None)
    assert _seen(dom0) == [
        ["xl", "save", "-p", "3", str(mem)],
        ["lvm", "lvcreate", "--snapshot", "--name", "domu-disk.ds.s1", "--extents",
         "100%ORIGIN", "vg0/domu-disk"],
        ["xl", "unpause", "3"],
    ]
    assert res.domain_state == "running" and res.memory_bytes == 128
    assert oct(mem.stat().st_mode & 0o777) == "0o600"
    assert oct(mem.parent.stat().st_mode & 0o777) == "0o700"
    assert dom0.snapshots == {"domu-disk.ds.s1"}
    # rolled back (a later step failed): the snapshot volume goes
    drv.undo_disks(UUID, name="s1", disks=[op])
    assert dom0.snapshots == set()


def test_disk_only_lvm_snapshot_pauses_briefly(tmp_path: Path) -> None:
    dom0 = FakeDom0([LVM_DISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = _lvm_op(drv, "d1")
    dom0.runner.calls.clear()
    drv.capture(UUID, name="d1", memory_file=None, disks=[op], progress=lambda s, m: None)
    assert [a[:2] for a in _seen(dom0)] == [["xl", "pause"], ["lvm", "lvcreate"],
                                            ["xl", "unpause"]]


def test_failed_lvm_snapshot_still_unpauses_and_removes_memory(tmp_path: Path) -> None:
    dom0 = FakeDom0([LVM_DISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = _lvm_op(drv, "s2")
    dom0.snapshots.add("domu-disk.ds.s2")  # made behind domsnap's back
    mem = tmp_path / "s2.save"
    with pytest.raises(Exception, match="s2"):
        drv.capture(UUID, name="s2", memory_file=mem, disks=[op], progress=lambda s, m: None)
    assert _seen(dom0)[-1] == ["xl", "unpause", "3"]
    assert not mem.exists()


def test_blkback_disk_that_is_not_lvm_is_refused_by_name(tmp_path: Path) -> None:
    dom0 = FakeDom0([LVM_DISK, FILE_DISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = DiskOp(vdev="xvdb", path="/srv/raw.img", format="raw", type="external",
                backend="phy")
    with pytest.raises(Refused, match=r"xvdb: /srv/raw.img .*not an LVM logical volume"):
        drv.disk_strategies(UUID, [op], active=True)
    internal = DiskOp(vdev="xvda", path="/dev/vg0/domu-disk", format="raw", type="internal",
                      backend="phy")
    with pytest.raises(Refused, match="no internal snapshots"):
        drv.disk_strategies(UUID, [internal], active=True)


def _serve_qmp(path: Path, nodes: list[dict[str, Any]]) -> threading.Thread:
    """A device model's QMP socket answering query-named-block-nodes (one session)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, conn.makefile("rw") as fh:
            fh.write(json.dumps({"QMP": {"version": {}, "capabilities": []}}) + "\n")
            fh.flush()
            for line in fh:
                cmd = json.loads(line)["execute"]
                answer = nodes if cmd == "query-named-block-nodes" else {}
                fh.write(json.dumps({"return": answer}) + "\n")
                fh.flush()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _node(name: str, drv: str, file: str) -> dict[str, Any]:
    return {"node-name": name, "drv": drv, "file": file}


def test_qdisk_strategies_follow_the_device_model_socket(tmp_path: Path) -> None:
    qdisk = {"pdev_path": "/img/a.qcow2", "vdev": "xvda", "backend": "qdisk",
             "format": "qcow2", "readwrite": 1}
    dom0 = FakeDom0([qdisk])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = DiskOp(vdev="xvda", path="/img/a.qcow2", format="qcow2", type="internal",
                backend="qdisk")
    assert drv.disk_strategies(UUID, [op], active=False) == ["qemu-img"]
    assert drv.disk_strategies(UUID, [op], active=True) == ["save-restore"]  # no socket
    (tmp_path / "run").mkdir()
    sock = tmp_path / "run" / "qmp-libxl-3"
    # captured shape: Xen's node for the image, over an automatic protocol node
    t = _serve_qmp(sock, [_node("xvda-qcow2", "qcow2", "/img/a.qcow2"),
                          _node("#block061", "file", "/img/a.qcow2")])
    assert drv.disk_strategies(UUID, [op], active=True) == ["qmp"]
    t.join(5)
    sock.unlink()
    t = _serve_qmp(sock, [_node("xvdb-qcow2", "qcow2", "/img/other.qcow2")])
    assert drv.disk_strategies(UUID, [op], active=True) == ["save-restore"]  # not served
    t.join(5)


def test_image_open_twice_in_the_device_model_is_refused(tmp_path: Path) -> None:
    """An HVM domain's emulated IDE drive beside its PV disk, on one image."""
    dom0 = FakeDom0([{"pdev_path": "/img/h.qcow2", "vdev": "hda", "backend": "qdisk",
                      "format": "qcow2", "readwrite": 1}])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    (tmp_path / "run").mkdir()
    t = _serve_qmp(tmp_path / "run" / "qmp-libxl-3", [
        _node("ide0-hd0", "qcow2", "/img/h.qcow2"), _node("#block1", "file", "/img/h.qcow2"),
        _node("hda-qcow2", "qcow2", "/img/h.qcow2"), _node("#block2", "file", "/img/h.qcow2")])
    op = DiskOp(vdev="hda", path="/img/h.qcow2", format="qcow2", type="internal",
                backend="qdisk")
    with pytest.raises(Refused, match=r"hda: /img/h.qcow2 is open in 2 block nodes"):
        drv.disk_strategies(UUID, [op], active=True)
    t.join(5)
    assert [a[1] for a in dom0.runner.argvs if a[0] == "xl"] == ["list", "list", "list", "list"]


def test_guest_that_does_not_suspend_is_left_running(tmp_path: Path) -> None:
    dom0 = FakeDom0([LVM_DISK], suspend_ok=False)
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = _lvm_op(drv, "s3")
    mem = tmp_path / "s3.save"
    with pytest.raises(CommandFailed, match="did not suspend") as err:
        drv.capture(UUID, name="s3", memory_file=mem, disks=[op], progress=lambda s, m: None)
    assert err.value.argv == ["xl", "save", "-p", "3", str(mem)]
    assert err.value.returncode == 1 and "timed out" in err.value.stderr
    assert _seen(dom0)[-1] == ["xl", "unpause", "3"]  # libxl left it paused: resumed
    assert not mem.exists() and dom0.snapshots == set()


QDISK = {"pdev_path": "/img/a.qcow2", "vdev": "xvda", "backend": "qdisk", "format": "qcow2",
         "readwrite": 1}


def _save_restore_op(drv: XlDriver) -> DiskOp:
    op = DiskOp(vdev="xvda", path="/img/a.qcow2", format="qcow2", type="internal",
                backend="qdisk")
    [strategy] = drv.disk_strategies(UUID, [op], active=True)  # no QMP socket: fallback
    assert strategy == "save-restore"
    return DiskOp(**{**op.__dict__, "strategy": strategy})


def test_save_restore_window_takes_the_disks_while_the_domain_is_down(tmp_path: Path) -> None:
    dom0 = FakeDom0([QDISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = _save_restore_op(drv)
    dom0.runner.calls.clear()
    res = drv.capture(UUID, name="w1", memory_file=None, disks=[op], progress=lambda s, m: None)
    scratch = str(tmp_path / "state" / "xl" / "scratch" / f"{UUID}.save")
    cfg = str(tmp_path / "state" / "xl" / f"{UUID}.cfg")
    assert [a for a in _seen(dom0) if a[0] == "xl"] == [
        ["xl", "save", "3", scratch], ["xl", "restore", cfg, scratch]]
    assert dom0.internal["/img/a.qcow2"] == {"w1"}
    assert res.domain_state == "running" and res.pause_ms is not None
    assert not Path(scratch).exists()  # the scratch save goes once the domain runs again
    assert drv.domain_info(UUID).domid == 7


def test_failed_restore_undoes_the_disks_and_restores_the_old_config(tmp_path: Path) -> None:
    dom0 = FakeDom0([QDISK])
    drv = _driver(tmp_path, dom0)
    drv.list_domains()
    op = _save_restore_op(drv)
    overlay = tmp_path / "a.w2.qcow2"
    op = DiskOp(**{**op.__dict__, "type": "external", "target": str(overlay)})
    dom0.restore_failures = 1
    with pytest.raises(CommandFailed, match="cannot"):
        drv.capture(UUID, name="w2", memory_file=None, disks=[op], progress=lambda s, m: None)
    assert [a[1] for a in dom0.runner.argvs if a[0] == "xl" and a[1] != "list"] == [
        "save", "restore", "restore"]
    # the second restore ran on the old image, not on the overlay made for the snapshot
    assert "/img/a.qcow2" in dom0.restored_with[-1]
    assert "a.w2.qcow2" not in dom0.restored_with[-1]
    assert dom0.created and not overlay.exists()  # the overlay made for it is gone
    assert drv.domain_info(UUID).state == "running"
    assert drv.domain_config(UUID).disks[0].target == "/img/a.qcow2"
