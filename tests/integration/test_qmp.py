"""QMPClient against a real QEMU 7.2 (no guest kernel: -S keeps the machine stopped).

Also proves the facts the qemu driver builds on: memory saved to, and loaded
from, a file descriptor passed with ``getfd`` (no shell, no ``exec:`` URI).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from domsnap.errors import OperationTimeout, QMPError
from workers.block.qemu_img import QemuImg
from workers.block.qmp import QMPClient
from workers.hostio.runner import SubprocessRunner

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"
FINAL = ("completed", "failed", "cancelled")


@dataclass
class Qemu:
    """One QEMU process started by a test."""

    proc: subprocess.Popen[bytes]
    sock: Path
    log: Path
    disk: Path

    def client(self, timeout: float = 10.0) -> QMPClient:
        return QMPClient(self.sock, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


StartQemu = Callable[..., Qemu]


def _listening(sock: Path) -> bool:
    """True once a socket is listening at ``sock``.

    QEMU creates the socket file (bind) a moment before it listens: a client
    connecting in between is refused. /proc/net/unix shows the listen flag.
    """
    with open("/proc/net/unix") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if len(fields) >= 8 and fields[7] == str(sock) and int(fields[3], 16) & 0x10000:
                return True
    return False


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    for tool in (QEMU, "qemu-img"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: these tests need it")
    path = tmp_path / "disk.qcow2"
    QemuImg(SubprocessRunner()).create(path, size_bytes=64 * 1024 * 1024)
    return path


@pytest.fixture
def start_qemu(tmp_path: Path, disk: Path) -> Iterator[StartQemu]:
    """Start QEMUs on ``disk``; every one is killed at teardown."""
    started: list[Qemu] = []
    # Unix socket paths are limited to 108 bytes: keep them out of the long tmp_path.
    sockdir = Path(tempfile.mkdtemp(prefix="domsnap-qmp-"))

    def start(name: str = "vm", *extra: str, stopped: bool = True) -> Qemu:
        sock, log = sockdir / f"{name}.sock", tmp_path / f"{name}.log"
        argv = [
            QEMU, "-accel", "kvm", "-accel", "tcg", "-machine", "q35", "-m", "64",
            "-nodefaults", "-display", "none", "-no-user-config",
            *(["-S"] if stopped else []),
            "-qmp", f"unix:{sock},server=on,wait=off",
            "-blockdev", f"driver=file,filename={disk},node-name=vda-file",
            "-blockdev", "driver=qcow2,file=vda-file,node-name=vda-qcow2",
            "-device", "virtio-blk-pci,drive=vda-qcow2,id=vda",
            *extra,
        ]  # fmt: skip
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        vm = Qemu(proc, sock, log, disk)
        started.append(vm)
        deadline = time.monotonic() + 20
        while not _listening(sock):
            if proc.poll() is not None:
                pytest.fail(f"QEMU exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no QMP socket after 20s: {log.read_text()}")
            time.sleep(0.01)
        return vm

    yield start
    for vm in started:
        vm.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


def migrate_status(qmp: QMPClient, until: tuple[str, ...], timeout: float = 60) -> list[str]:
    """Poll query-migrate until a status in ``until``; return the distinct statuses seen."""
    seen: list[str] = []

    def done(value: Any) -> bool:
        status = str(value.get("status", "none"))
        if not seen or seen[-1] != status:
            seen.append(status)
        return status in until

    qmp.poll("query-migrate", until=done, timeout=timeout)
    return seen


def settled(qmp: QMPClient) -> str:
    """The run state once a completed migration is finalized.

    query-migrate says "completed" a moment before the run state leaves
    "finish-migrate"; a ``cont`` in between fails with "Migration is not
    finalized yet" (seen on 7.2).
    """
    status = qmp.poll("query-status", until=lambda v: v["status"] != "finish-migrate", timeout=10)
    return str(status["status"])


# -- session -------------------------------------------------------------------


def test_greeting_capabilities_and_query_status(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    with vm.client() as qmp:
        assert qmp.greeting is not None
        version = qmp.greeting["QMP"]["version"]["qemu"]
        assert (version["major"], version["minor"]) >= (7, 2)
        assert qmp.execute("query-status") == {
            "status": "prelaunch",
            "singlestep": False,
            "running": False,
        }
    assert not qmp.connected
    qmp.close()  # idempotent


def test_error_reply_keeps_sent_and_received(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    with vm.client() as qmp:
        with pytest.raises(QMPError) as info:
            qmp.execute("no-such-command", {"x": 1})
        err = info.value
        assert err.error_class == "CommandNotFound"
        assert str(err) == "The command no-such-command has not been found"
        assert err.sent["execute"] == "no-such-command"
        assert err.sent["arguments"] == {"x": 1}
        assert err.received["id"] == err.sent["id"]
        assert err.received["error"]["class"] == "CommandNotFound"
        json.dumps(err.to_dict())  # crosses the queue as JSON
        with pytest.raises(QMPError) as info:
            qmp.execute("blockdev-snapshot-internal-sync", {"device": "nosuch", "name": "s"})
        assert info.value.error_class == "GenericError"
        assert qmp.execute("query-status")["status"] == "prelaunch"  # session still fine


def test_missing_and_refusing_sockets(tmp_path: Path) -> None:
    with pytest.raises(QMPError, match="does not exist"):
        QMPClient(tmp_path / "nosuch.sock").connect()
    path = tmp_path / "s"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: like a socket left by a dead QEMU
    try:
        with pytest.raises(QMPError, match="refused") as info:
            QMPClient(path).connect()
        assert str(path) in str(info.value)
    finally:
        dead.close()


def test_eof_after_quit_is_a_qmp_error(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    qmp = vm.client()
    qmp.connect()
    assert qmp.execute("quit") == {}
    assert vm.proc.wait(timeout=10) == 0
    with pytest.raises(QMPError, match=str(vm.sock)):
        qmp.execute("query-status")
    assert not qmp.connected


def test_second_client_times_out_while_the_first_is_connected(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    with vm.client() as first:
        second = vm.client(timeout=0.5)
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match="monitor may be busy") as info:
            second.connect()
        assert time.monotonic() - started < 3
        assert str(vm.sock) in str(info.value)
        assert not second.connected
        assert first.execute("query-status")["status"] == "prelaunch"
    with vm.client() as third:  # served once the first one has gone
        assert third.execute("query-status")["status"] == "prelaunch"


# -- block ---------------------------------------------------------------------


def test_transaction_internal_snapshot_and_named_nodes(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    with vm.client() as qmp:
        nodes = qmp.execute("query-named-block-nodes", {"flat": True})
        by_file = [n for n in nodes if n["file"] == str(vm.disk) and n["drv"] == "qcow2"]
        assert [n["node-name"] for n in by_file] == ["vda-qcow2"]
        # blockdev-snapshot-internal-sync has no "node-name": "device" takes a node name.
        action = {"device": "vda-qcow2", "name": "snap1"}
        actions = [{"type": "blockdev-snapshot-internal-sync", "data": action}]
        assert qmp.execute("transaction", {"actions": actions}) == {}
        nodes = qmp.execute("query-named-block-nodes", {"flat": True})
        node = next(n for n in nodes if n["node-name"] == "vda-qcow2")
        assert [s["name"] for s in node["image"]["snapshots"]] == ["snap1"]
        with pytest.raises(QMPError):  # atomic: a duplicate fails the whole transaction
            qmp.execute("transaction", {"actions": actions})
    vm.stop()
    assert QemuImg(SubprocessRunner()).snapshot_list(vm.disk) == ["snap1"]


# -- events and polling --------------------------------------------------------


def test_stop_and_cont_produce_events(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    with vm.client() as qmp:
        assert qmp.execute("cont") == {}
        assert qmp.execute("stop") == {}
        assert qmp.execute("query-status")["status"] == "paused"
        resume = qmp.wait_event("RESUME", timeout=5)
        stop = qmp.wait_event("STOP", timeout=5)
        assert set(resume["timestamp"]) == {"seconds", "microseconds"}
        assert resume["data"] == {}
        assert (stop["timestamp"]["seconds"], stop["timestamp"]["microseconds"]) >= (
            resume["timestamp"]["seconds"],
            resume["timestamp"]["microseconds"],
        )
        assert not [e for e in qmp.events if e["event"] in ("STOP", "RESUME")]
        started = time.monotonic()
        with pytest.raises(OperationTimeout, match="RESUME"):
            qmp.wait_event("RESUME", timeout=0.2)
        assert time.monotonic() - started < 2


def test_poll_times_out_naming_command_and_last_value(start_qemu: StartQemu) -> None:
    vm = start_qemu()
    with vm.client() as qmp:
        with pytest.raises(OperationTimeout) as info:
            qmp.poll("query-status", until=lambda v: v["running"], timeout=0.2)
        assert "query-status" in str(info.value)
        assert "prelaunch" in str(info.value)
        qmp.execute("cont")
        assert qmp.poll("query-status", until=lambda v: v["running"], timeout=5)["running"]


# -- memory over getfd ---------------------------------------------------------


def test_migrate_out_and_in_over_getfd(start_qemu: StartQemu, tmp_path: Path) -> None:
    memfile = tmp_path / "mem.save"
    src = start_qemu("src")
    with src.client() as qmp:
        qmp.execute("cont")
        qmp.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "events", "state": True}]},
        )
        fd = os.open(memfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            qmp.send_fd("domsnap-mem", fd)
        finally:
            os.close(fd)  # QEMU holds its own copy
        qmp.execute("migrate", {"uri": "fd:domsnap-mem"})
        seen = migrate_status(qmp, FINAL)
        assert seen[-1] == "completed", seen
        assert qmp.wait_event(
            "MIGRATION", timeout=5, match=lambda e: e["data"]["status"] == "completed"
        )
        assert settled(qmp) == "postmigrate"
        with pytest.raises(QMPError, match="not found"):  # the migration consumed the fd
            qmp.execute("closefd", {"fdname": "domsnap-mem"})
    src.stop()

    st = memfile.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size > 0
    assert memfile.read_bytes()[:4] == b"QEVM"

    dst = start_qemu("dst", "-incoming", "defer")
    with dst.client() as qmp:
        assert qmp.execute("query-status")["status"] == "inmigrate"
        fd = os.open(memfile, os.O_RDONLY | os.O_CLOEXEC)
        try:
            qmp.send_fd("domsnap-mem", fd)
        finally:
            os.close(fd)
        qmp.execute("migrate-incoming", {"uri": "fd:domsnap-mem"})
        seen = migrate_status(qmp, FINAL)
        assert seen[-1] == "completed", seen
        # The source ran when saved; -S keeps the restored machine paused.
        assert qmp.execute("query-status") == {
            "status": "paused",
            "singlestep": False,
            "running": False,
        }
        qmp.execute("cont")
        qmp.wait_event("RESUME", timeout=5)
        assert qmp.execute("query-status")["status"] == "running"


def test_incoming_without_dash_s_resumes_by_itself(start_qemu: StartQemu, tmp_path: Path) -> None:
    memfile = tmp_path / "mem.save"
    src = start_qemu("src")
    with src.client() as qmp:
        qmp.execute("cont")
        fd = os.open(memfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        qmp.send_fd("m", fd)
        os.close(fd)
        qmp.execute("migrate", {"uri": "fd:m"})
        assert migrate_status(qmp, FINAL)[-1] == "completed"
    src.stop()
    dst = start_qemu("dst", "-incoming", "defer", stopped=False)
    with dst.client() as qmp:
        fd = os.open(memfile, os.O_RDONLY)
        qmp.send_fd("m", fd)
        os.close(fd)
        qmp.execute("migrate-incoming", {"uri": "fd:m"})
        assert migrate_status(qmp, FINAL)[-1] == "completed"
        qmp.wait_event("RESUME", timeout=5)
        assert qmp.execute("query-status")["status"] == "running"


def test_incoming_garbage_kills_qemu(start_qemu: StartQemu, tmp_path: Path) -> None:
    junk = tmp_path / "junk.save"
    junk.write_bytes(b"not a migration stream\n" * 100)
    dst = start_qemu("dst", "-incoming", "defer")
    with dst.client() as qmp:
        fd = os.open(junk, os.O_RDONLY)
        qmp.send_fd("m", fd)
        os.close(fd)
        qmp.execute("migrate-incoming", {"uri": "fd:m"})
        with pytest.raises(QMPError):  # QEMU exits: the connection drops
            migrate_status(qmp, FINAL, timeout=10)
    assert dst.proc.wait(timeout=10) == 1
    assert "Not a migration stream" in dst.log.read_text()


def test_live_save_with_pause_before_switchover(start_qemu: StartQemu, tmp_path: Path) -> None:
    """The qemu driver's create: memory live, disks at the pause, then resume."""
    memfile = tmp_path / "mem.save"
    vm = start_qemu()
    with vm.client() as qmp:
        qmp.execute("cont")
        caps = [
            {"capability": "events", "state": True},
            {"capability": "pause-before-switchover", "state": True},
        ]
        qmp.execute("migrate-set-capabilities", {"capabilities": caps})
        fd = os.open(memfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        qmp.send_fd("m", fd)
        os.close(fd)
        qmp.execute("migrate", {"uri": "fd:m"})
        seen = migrate_status(qmp, ("pre-switchover", *FINAL))
        assert seen[-1] == "pre-switchover", seen
        assert qmp.execute("query-status") == {
            "status": "finish-migrate",
            "singlestep": False,
            "running": False,
        }
        action = {"device": "vda-qcow2", "name": "live"}
        qmp.execute(
            "transaction",
            {"actions": [{"type": "blockdev-snapshot-internal-sync", "data": action}]},
        )
        qmp.execute("migrate-continue", {"state": "pre-switchover"})
        assert migrate_status(qmp, FINAL)[-1] == "completed"
        assert settled(qmp) == "postmigrate"
        qmp.execute("cont")
        assert qmp.execute("query-status")["status"] == "running"
        events = [(e["event"], e["data"].get("status")) for e in qmp.events]
        stop = events.index(("STOP", None))
        assert events[stop + 1 :] == [
            ("MIGRATION", "pre-switchover"),
            ("MIGRATION", "device"),
            ("MIGRATION_PASS", None),
            ("MIGRATION", "completed"),
            ("RESUME", None),
        ]
    assert memfile.read_bytes()[:4] == b"QEVM"
    vm.stop()
    assert QemuImg(SubprocessRunner()).snapshot_list(vm.disk) == ["live"]


# -- wire details, against a scripted server ------------------------------------


def test_replies_are_matched_by_id_and_events_queued(tmp_path: Path) -> None:
    """A stale reply (another id) is dropped; events before the reply are queued."""
    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:

            def send(obj: dict[str, Any]) -> None:
                f.write(json.dumps(obj).encode() + b"\r\n")
                f.flush()

            send({"QMP": {"version": {}, "capabilities": []}})
            cmd = json.loads(f.readline())
            send({"return": {}, "id": cmd["id"]})
            cmd = json.loads(f.readline())
            send({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}})
            send({"return": "stale", "id": "someone-else"})
            f.write(b'{"return": {"answer": 42}, "id": ' + json.dumps(cmd["id"]).encode())
            f.flush()  # a reply split across reads
            time.sleep(0.05)
            f.write(b"}\r\n")
            f.flush()
            f.readline()  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with QMPClient(path, timeout=5) as qmp:
            assert qmp.execute("anything") == {"answer": 42}
            assert [e["event"] for e in qmp.events] == ["STOP"]
            assert qmp.wait_event("STOP", timeout=0.1)["timestamp"]["seconds"] == 1
            assert qmp.events == []
        thread.join(timeout=5)
    finally:
        server.close()
