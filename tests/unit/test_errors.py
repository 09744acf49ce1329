"""The error tree: JSON round trips, codes, exit codes, and what each error keeps."""

from __future__ import annotations

import json

import pytest

from domsnap import errors as E
from domsnap.errors import (
    CommandFailed,
    ConfigFileError,
    DomsnapError,
    InvalidInput,
    QMPError,
    from_dict,
)


def all_classes() -> list[type[DomsnapError]]:
    out: list[type[DomsnapError]] = []
    todo: list[type[DomsnapError]] = [DomsnapError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def samples() -> list[DomsnapError]:
    return [
        DomsnapError("something broke", where="here"),
        InvalidInput("name: invalid snapshot name 'a/b'", field="name"),
        ConfigFileError("expected a number", path="/etc/xen/domu.cfg", line=7, key="memory"),
        E.NotFound("gone"),
        E.UnknownDomain("unknown domain 'nosuch'", domain="nosuch"),
        E.UnknownSnapshot("no snapshot 's1'", name="s1", domain="u"),
        E.UnknownJob("no job j", job_id="j"),
        E.Conflict("conflict"),
        E.DomainLocked("domain u is busy: job j1", domain="u", job_id="j1"),
        E.SnapshotExists("snapshot 's1' already exists", name="s1"),
        E.LockLost("job j1 no longer holds the lock of domain u", domain="u", job_id="j1"),
        E.Refused("raw images have no internal snapshots", disk="xvdb"),
        E.InsufficientSpace("not enough free space for memory image /s/m.save (160 MiB)",
                            path="/s/m.save", needed=436207616, free=1048576),
        E.HostUnavailable("host h1 has no live worker", host="h1"),
        E.SchemaMismatch("schema_version 2 is not supported"),
        E.BackendError("backend"),
        CommandFailed(["/usr/bin/xl", "save", "-p", "domu", "/s/x.save"], 1,
                      "Saving to /s/x.save\nnosuch is an invalid domain identifier (rc=-6)\n"),
        QMPError("Need a root block node",
                 sent={"execute": "blockdev-snapshot-delete-internal-sync",
                       "arguments": {"device": "xvda-qcow2", "name": "live1"}},
                 received={"error": {"class": "GenericError",
                                     "desc": "Need a root block node"}},
                 error_class="GenericError"),
        E.XlParseError("not a JSON array", '{"domid": 1}'),
        E.StoreUnavailable("Redis: Error 111 connecting to 127.0.0.1:1."),
        E.OperationTimeout("job j did not finish within 60 s", job_id="j"),
        E.OperationFailed("create failed", job_id="j", error={"code": "qmp"}),
        E.Cancelled("create of 's1' cancelled before the capture", job_id="j"),
    ]


def test_samples_cover_every_class() -> None:
    assert {type(e) for e in samples()} == set(all_classes())


@pytest.mark.parametrize("err", samples(), ids=lambda e: type(e).__name__)
def test_round_trip_through_json(err: DomsnapError) -> None:
    wire = json.loads(json.dumps(err.to_dict()))
    assert set(wire) == {"code", "message", "details"}
    back = from_dict(wire)
    assert type(back) is type(err)
    assert back.code == err.code
    assert back.message == err.message
    assert str(back) == str(err)
    assert back.details == err.details
    assert back.exit_code == err.exit_code
    assert back.to_dict() == wire
    assert isinstance(back, Exception)


def test_unknown_code_becomes_base_error() -> None:
    back = from_dict({"code": "from_the_future", "message": "m", "details": {"x": 1}})
    assert type(back) is DomsnapError
    assert (back.message, back.details) == ("m", {"x": 1})
    bare = from_dict({})
    assert type(bare) is DomsnapError and bare.message == "" and bare.details == {}


def test_every_class_has_a_unique_code() -> None:
    classes = all_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(codes)
    for cls in classes:
        assert cls.code and cls.code.isidentifier()
        # each code resolves back to its own class
        assert type(from_dict({"code": cls.code, "message": "x"})) is cls


def test_exit_codes() -> None:
    expected: dict[type[DomsnapError], int] = {
        DomsnapError: 1, InvalidInput: 2, ConfigFileError: 2, E.NotFound: 3,
        E.UnknownDomain: 3, E.UnknownSnapshot: 3, E.UnknownJob: 3, E.Conflict: 4,
        E.DomainLocked: 4, E.SnapshotExists: 4, E.LockLost: 4, E.Refused: 5,
        E.InsufficientSpace: 5, E.HostUnavailable: 6,
        E.SchemaMismatch: 7, E.BackendError: 8, CommandFailed: 8, QMPError: 8,
        E.StoreUnavailable: 8, E.XlParseError: 8, E.OperationTimeout: 9,
        E.OperationFailed: 10, E.Cancelled: 10,
    }
    assert set(expected) == set(all_classes())
    for cls, code in expected.items():
        assert cls.exit_code == code, cls.__name__
    for err in samples():
        assert err.exit_code == expected[type(err)]


def test_hierarchy() -> None:
    assert issubclass(ConfigFileError, InvalidInput)
    families: dict[type[DomsnapError], list[type[DomsnapError]]] = {
        E.NotFound: [E.UnknownDomain, E.UnknownSnapshot, E.UnknownJob],
        E.Conflict: [E.DomainLocked, E.LockLost, E.SnapshotExists],
        E.BackendError: [CommandFailed, QMPError, E.StoreUnavailable],
    }
    for parent, children in families.items():
        for cls in children:
            assert issubclass(cls, parent)


def test_none_details_are_dropped() -> None:
    err = DomsnapError("m", a=None, b=0, c="")
    assert err.details == {"b": 0, "c": ""}
    assert InvalidInput("bad").details == {}
    assert InvalidInput("bad").field is None


def test_invalid_input_names_field() -> None:
    err = InvalidInput("host: invalid host name 'a b'", field="host")
    assert err.field == "host"
    assert err.details == {"field": "host"}


def test_config_file_error_names_path_line_key() -> None:
    err = ConfigFileError("expected a number", path="/etc/xen/domu.cfg", line=7, key="memory")
    assert str(err) == "/etc/xen/domu.cfg:7: memory: expected a number"
    assert (err.line, err.key, err.reason, err.field) == (7, "memory", "expected a number",
                                                           "memory")
    assert err.details == {"field": "memory", "path": "/etc/xen/domu.cfg", "line": 7,
                           "key": "memory", "reason": "expected a number"}
    assert str(ConfigFileError("bad", line=3)) == "<config>:3: bad"
    assert str(ConfigFileError("bad", path="/x.cfg", key="disk")) == "/x.cfg: disk: bad"
    assert str(ConfigFileError("empty file")) == "<config>: empty file"


def test_command_failed_keeps_argv_rc_stderr() -> None:
    argv = ["/usr/bin/qemu-img", "snapshot", "-c", "s1", "/img/d0.qcow2"]
    stderr = "warning: something\nqemu-img: Failed to get \"write\" lock\n"
    err = CommandFailed(argv, 1, stderr, stdout="out")
    assert (err.argv, err.returncode, err.stderr, err.stdout) == (argv, 1, stderr, "out")
    assert str(err) == ('/usr/bin/qemu-img failed (exit 1): qemu-img: Failed to get "write" '
                        "lock")
    assert "warning" not in str(err)
    assert err.details == {"argv": argv, "returncode": 1, "stderr": stderr}
    assert err.code == "command_failed"


def test_command_failed_timeout_and_no_output() -> None:
    err = CommandFailed(["xl", "save", "-p", "domu", "/s"], None, "   \n")
    assert str(err) == "xl failed (timed out): no output"
    assert err.returncode is None
    assert "returncode" not in err.details  # None is dropped


def test_qmp_error_keeps_sent_and_received() -> None:
    sent = {"execute": "transaction", "arguments": {"actions": []}}
    received = {"error": {"class": "GenericError", "desc": "Need a root block node"}}
    err = QMPError("transaction failed: Need a root block node", sent=sent, received=received,
                   error_class="GenericError")
    assert (err.sent, err.received, err.error_class) == (sent, received, "GenericError")
    assert err.details == {"sent": sent, "received": received, "error_class": "GenericError"}
    assert err.code == "qmp"


def test_rebuilt_errors_keep_their_attributes() -> None:
    """An error rebuilt by from_dict is an instance of its class and must carry the
    attributes that class promises (``except CommandFailed as e: e.argv``)."""
    argv = ["xl", "save", "-p", "domu", "/s/x.save"]
    cmd = from_dict(CommandFailed(argv, 1, "boom\n").to_dict())
    assert isinstance(cmd, CommandFailed)
    assert (cmd.argv, cmd.returncode, cmd.stderr) == (argv, 1, "boom\n")

    qmp = from_dict(QMPError("m", sent={"execute": "cont"}, received={"error": {}}).to_dict())
    assert isinstance(qmp, QMPError)
    assert (qmp.sent, qmp.received) == ({"execute": "cont"}, {"error": {}})

    inv = from_dict(InvalidInput("bad", field="name").to_dict())
    assert isinstance(inv, InvalidInput)
    assert inv.field == "name"

    cfg = from_dict(ConfigFileError("r", path="/p", line=2, key="k").to_dict())
    assert isinstance(cfg, ConfigFileError)
    assert (cfg.line, cfg.key, cfg.reason) == (2, "k", "r")


def test_parse_model_names_the_field_and_detects_other_versions() -> None:
    from domsnap.errors import InvalidInput, SchemaMismatch
    from domsnap.validation import parse_model
    from schemas.models import DeleteRequest

    good = {"job_id": "11111111-1111-4111-8111-111111111111",
            "domain": "4d7dea0d-7a6f-43eb-b256-340075ce6ec9", "host": "h1", "name": "s1"}
    assert parse_model(DeleteRequest, good).name == "s1"
    with pytest.raises(InvalidInput, match=r"^name: ") as bad:
        parse_model(DeleteRequest, {**good, "name": "../x"})
    assert bad.value.field == "name"
    with pytest.raises(SchemaMismatch, match="schema_version 2 is not supported"):
        parse_model(DeleteRequest, {**good, "schema_version": 2})
