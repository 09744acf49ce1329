"""Bad input never crashes and is refused with an error that names the field (issue 7).

Property-based: hypothesis makes the bad request bodies (through the real validation
boundary, domsnap.validation.parse_model), the bad broker messages (through the real
intake checks of workers.intake) and the bad xl config files (through the real parser).
The strategies are shared with tests/integration/test_bad_messages.py, which sends a
sample of them through the real queue to a real worker.

Budget (issue 7 asks for 10,000 generated cases in CI in all): here 8,200 in-process
(2,000 bodies, 1,500 task messages, 2,000 envelopes, 2,700 config texts), 1,800 CLI
runs in test_bad_input_cli.py, a sample through the real queue in the integration
suite; about 20 s of CPU together.
"""

from __future__ import annotations

import base64
import json
import string
import uuid as uuidlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domsnap.errors import ConfigFileError, DomsnapError, InvalidInput, SchemaMismatch
from domsnap.validation import parse_model
from domsnap.xlcfg import parse_domain_config, parse_snapshot_config
from schemas import SCHEMA_VERSION
from schemas.models import JOB_ID_RE, SNAPSHOT_NAME_RE, CreateRequest, DeleteRequest, RevertRequest
from tasks import ops as _ops  # registers the tasks with the app
from workers.app import app
from workers.intake import BadMessage, check_envelope, check_task_message
from workers.routing import TASK_CREATE, TASK_DISK, host_queue, inflight_queue

JOB = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
DOM = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"
MODELS: dict[str, type[CreateRequest] | type[RevertRequest] | type[DeleteRequest]] = {
    "create": CreateRequest, "revert": RevertRequest, "delete": DeleteRequest}
FAST = settings(max_examples=2000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def valid_body(op: str, *, host: str = "h1", domain: str = DOM,
               job_id: str = JOB) -> dict[str, Any]:
    return {"op": op, "job_id": job_id, "domain": domain, "host": host, "name": "snap1"}


# ---------------------------------------------------------------- bad values per field

_junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                  st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_not_str = _junk.filter(lambda v: not isinstance(v, str))
_bad_text = st.text(min_size=0, max_size=300)


def _job_spellings(u: uuidlib.UUID) -> list[str]:
    s = str(u)
    return [s.upper(), "{" + s + "}", s.replace("-", ""), "urn:uuid:" + s, " " + s, s + "\n"]


bad_job_id = st.one_of(
    _not_str,
    _bad_text.filter(lambda v: not JOB_ID_RE.fullmatch(v)),
    st.builds(_job_spellings, st.uuids()).flatmap(st.sampled_from)
    .filter(lambda v: not JOB_ID_RE.fullmatch(v)),
)


def _not_uuid(v: str) -> bool:
    try:
        uuidlib.UUID(v)
    except ValueError:
        return True
    return False


bad_domain = st.one_of(_not_str, _bad_text.filter(_not_uuid))
bad_host = st.one_of(
    _not_str, st.just(""), st.text(min_size=254, max_size=300, alphabet="ab"),
    st.text(min_size=1, max_size=40).filter(
        lambda v: any(c not in string.ascii_letters + string.digits + "_.-" for c in v)))
bad_name = st.one_of(
    _not_str, st.sampled_from(["", ".", "..", "a/b", "../x", "/abs", "x" * 129, "a b", "é"]),
    _bad_text.filter(lambda v: not SNAPSHOT_NAME_RE.fullmatch(v)))
bad_float = st.one_of(st.none(), st.lists(st.integers(), max_size=2),
                      st.text(alphabet=string.ascii_letters, min_size=1, max_size=5))
bad_bool = st.one_of(st.lists(st.integers(), max_size=2), st.integers(min_value=2),
                     st.sampled_from(["maybe", "2", "", "oui"]))
bad_path = st.one_of(
    _not_str.filter(lambda v: v is not None),  # optional fields: None is "not given"
    st.builds(lambda n: "/snap/" + "m" * n + ".save", st.integers(256, 600)),
    st.builds(lambda n: "/snap/" + "/".join(["d" * 200] * n), st.integers(21, 30)),
    st.builds(lambda n: "/snap/" + "é" * n, st.integers(128, 200)),  # 2 bytes each
)
bad_disks = st.one_of(
    st.sampled_from([{}, "xvda", 3]),
    st.lists(st.one_of(
        st.fixed_dictionaries({"vdev": st.one_of(_not_str, st.sampled_from(
            ["", "x" * 33, "a-b", "a/b", "é"]))}),
        st.fixed_dictionaries({"vdev": st.just("xvda"), "type": st.sampled_from(
            ["snapshot", "", "INTERNAL", 1])}),
        st.fixed_dictionaries({"vdev": st.just("xvda"), "format": st.sampled_from(
            ["vmdk", "", 2])}),
        st.fixed_dictionaries({"vdev": st.just("xvda"), "target": bad_path}),
        st.fixed_dictionaries({"vdev": st.just("xvda"), "bogus": st.integers()}),
    ), min_size=1, max_size=3),
)

COMMON = {"job_id": bad_job_id, "domain": bad_domain, "host": bad_host, "name": bad_name,
          "submitted_at": bad_float, "domain_name": st.one_of(_not_str, st.just("n" * 254))}
PER_OP: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "create": {**COMMON, "disk_only": bad_bool, "memory_file": bad_path,
               "description": st.one_of(_not_str.filter(lambda v: v is not None),
                                        st.just("d" * 4097)),
               "type": st.sampled_from(["", "both", "INTERNAL", 0]), "disks": bad_disks},
    "revert": {**COMMON, "start": st.sampled_from(["", "shutoff", "RUNNING", 1, True])},
    "delete": COMMON,
}
_extra_key = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12)


@st.composite
def bad_bodies(draw: st.DrawFn, *, host: str = "h1",
               domain: str = DOM) -> tuple[str, Any, str]:
    """(op, body, the field the error must name): a valid body with one thing wrong."""
    op = draw(st.sampled_from(sorted(PER_OP)))
    body = valid_body(op, host=host, domain=domain,
                      job_id=str(uuidlib.UUID(int=draw(st.integers(0, 2**122)), version=4)))
    kind = draw(st.sampled_from(["field", "field", "field", "missing", "extra", "version",
                                 "op", "shape"]))
    if kind == "field":
        field = draw(st.sampled_from(sorted(PER_OP[op])))
        body[field] = draw(PER_OP[op][field])
        return op, body, field
    if kind == "missing":
        field = draw(st.sampled_from(["job_id", "domain", "host", "name"]))
        del body[field]
        return op, body, field
    if kind == "extra":
        key = draw(_extra_key.filter(lambda k: k not in MODELS[op].model_fields))
        body[key] = draw(_junk)
        return op, body, key
    if kind == "version":
        body["schema_version"] = draw(st.integers().filter(lambda v: v != SCHEMA_VERSION))
        return op, body, "schema_version"
    if kind == "op":
        body["op"] = draw(st.sampled_from([o for o in ("create", "revert", "delete", "", 1)
                                           if o != op]))
        return op, body, "op"
    return op, draw(st.one_of(st.lists(_junk, max_size=3), st.text(max_size=20),
                              st.integers(), st.none())), "body"


def assert_names_field(exc: DomsnapError, field: str) -> None:
    msg = exc.message
    assert "Value error" not in msg and "Assertion failed" not in msg, msg
    assert msg.startswith(field.split(".")[0]), (field, msg)
    assert len(msg) < 600, msg
    if isinstance(exc, InvalidInput):
        assert exc.field is not None and exc.field.split(".")[0] == field.split(".")[0]


@FAST
@given(bad_bodies())
def test_bad_request_bodies_are_refused_naming_the_field(case: tuple[str, Any, str]) -> None:
    op, body, field = case
    with pytest.raises((InvalidInput, SchemaMismatch)) as info:
        parse_model(MODELS[op], body)
    assert_names_field(info.value, field)
    if field == "schema_version":
        assert isinstance(info.value, SchemaMismatch)


@pytest.mark.parametrize("value", [JOB.upper(), "{" + JOB + "}", JOB.replace("-", "")])
def test_non_canonical_job_id_is_refused_not_folded(value: str) -> None:
    with pytest.raises(InvalidInput, match="canonical form") as info:
        parse_model(CreateRequest, {**valid_body("create"), "job_id": value})
    assert info.value.field == "job_id" and JOB in info.value.message


def test_messages_have_no_pydantic_prefix() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_model(CreateRequest, {**valid_body("create"), "name": "a/b"})
    assert info.value.message.startswith("name: invalid snapshot name 'a/b'")
    assert "Value error" not in info.value.message


@pytest.mark.parametrize("path", ["/snap/" + "m" * 300 + ".save",
                                  "/snap/" + "/".join(["d" * 250] * 17)])
def test_memory_file_name_lengths_are_checked_up_front(path: str) -> None:
    """issue 7: a 300-character memory file name got as far as the save, left the job
    running and the host stalled; now the request itself is refused."""
    with pytest.raises(InvalidInput) as info:
        parse_model(CreateRequest, {**valid_body("create"), "memory_file": path})
    assert info.value.field == "memory_file"
    assert "at most" in info.value.message


def test_target_name_length_is_checked_up_front() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_model(CreateRequest, {**valid_body("create"), "disks": [
            {"vdev": "xvda", "type": "external", "target": "/s/" + "t" * 256}]})
    assert info.value.field == "disks.0.target"


def test_longest_allowed_names_pass() -> None:
    ok = "/s/" + "m" * 255
    assert parse_model(CreateRequest, {**valid_body("create"), "memory_file": ok}).memory_file


# ---------------------------------------------------------------- broker messages

HOST = "h1"


def _celery_body(args: Any, kwargs: Any = None, embed: Any = None) -> bytes:
    return json.dumps([args, kwargs if kwargs is not None else {},
                       embed if embed is not None else {}]).encode()


GOOD_HEADERS = {"task": TASK_CREATE, "id": JOB}


def _check(**part: Any) -> None:
    """check_task_message on a well-formed message with ``part`` replaced."""
    msg: dict[str, Any] = {"headers": GOOD_HEADERS, "ctype": "application/json",
                           "enc": "utf-8", "body": _celery_body([valid_body("create")]),
                           "queue": host_queue(HOST), **part}
    check_task_message(app, HOST, msg["headers"], msg["ctype"], msg["enc"], msg["body"],
                       msg["queue"])


def test_a_well_formed_message_passes() -> None:
    assert _ops.create_entry.name in app.tasks
    _check()


_bad_message_parts = st.one_of(
    st.builds(lambda h: {"headers": h}, st.one_of(
        st.none(), st.lists(st.text(max_size=3), max_size=2), st.text(max_size=5),
        st.fixed_dictionaries({"task": _not_str, "id": st.just(JOB)}),
        st.fixed_dictionaries({"task": st.just(TASK_CREATE), "id": _not_str}),
        st.fixed_dictionaries({"task": st.text(max_size=30).filter(
            lambda t: t not in app.tasks or not t.startswith("domsnap.")), "id": st.just(JOB)}),
        st.fixed_dictionaries({"task": st.sampled_from(sorted(app.tasks)).filter(
            lambda t: not t.startswith("domsnap.")), "id": st.just(JOB)}),
        st.just({"id": JOB}), st.just({"task": TASK_CREATE}))),
    st.builds(lambda c: {"ctype": c}, st.one_of(_not_str, st.sampled_from(
        ["application/x-python-serialize", "application/x-yaml", "text/plain", ""]))),
    st.builds(lambda e: {"enc": e}, st.sampled_from(["binary", "latin-1", 5, ""])),
    st.builds(lambda b: {"body": b}, st.one_of(
        st.binary(max_size=40).filter(lambda b: not _is_celery_array(b)),
        st.builds(lambda v: json.dumps(v).encode(), st.one_of(
            _junk, st.text(max_size=10), st.lists(_junk, min_size=0, max_size=2),
            st.lists(_junk, min_size=4, max_size=5))),
        st.builds(_celery_body, st.one_of(
            st.just([]), st.just([1, 2]), st.lists(_junk.filter(lambda v: not isinstance(v, dict)),
                                                   min_size=1, max_size=1),
            st.just([valid_body("create"), 1])),
            st.one_of(st.just({}), st.just({"x": 1}))),
        st.builds(_celery_body, st.just([valid_body("create")]), st.just({}), st.sampled_from([
            {"callbacks": [{"task": TASK_DISK}]}, {"errbacks": [{"task": TASK_DISK}]},
            {"chain": [{"task": TASK_DISK}]}, {"chord": {"task": TASK_DISK}}, {"bogus": 1}])),
        st.builds(lambda v: json.dumps([[valid_body("create")], v, {}]).encode(),
                  _junk.filter(lambda v: not isinstance(v, dict))),
        st.just(b"[" * 100_000 + b"]" * 100_000),
        st.just(b" " * (5 << 20)))),
    st.builds(lambda q: {"queue": q}, st.one_of(_not_str, st.sampled_from(
        ["domsnap.host.h2", "celery", "", host_queue(HOST) + "x"]))),
)


def _is_celery_array(b: bytes) -> bool:
    try:
        v = json.loads(b)
    except ValueError:
        return False
    return isinstance(v, list) and len(v) == 3


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_bad_message_parts)
def test_bad_task_messages_are_turned_away(part: dict[str, Any]) -> None:
    with pytest.raises(BadMessage) as info:
        _check(**part)
    assert str(info.value) and len(str(info.value)) < 400


def test_a_continuation_from_the_public_queue_is_turned_away() -> None:
    """issue 7: a per-disk step sent to the public queue ran without planning."""
    body = _celery_body([valid_body("create"), {"vdev": "xvda", "path": "/etc/passwd"}])
    with pytest.raises(BadMessage, match="internal step"):
        _check(headers={"task": TASK_DISK, "id": JOB}, body=body)
    _check(headers={"task": TASK_DISK, "id": JOB}, body=body, queue=inflight_queue(HOST))


def test_arguments_must_bind_to_the_task() -> None:
    for args, kwargs in (([], {}), ([valid_body("create"), 1], {}), ([], {"x": 1}),
                         ([valid_body("create")], {"body": {}}), (["s"], {})):
        with pytest.raises(BadMessage):
            _check(body=_celery_body(args, kwargs))


def _envelope(**over: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "body": base64.b64encode(_celery_body([valid_body("create")])).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": dict(GOOD_HEADERS),
        "properties": {"delivery_tag": JOB, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": host_queue(HOST)}}}
    env.update(over)
    return env


def test_a_well_formed_envelope_passes() -> None:
    check_envelope(_envelope())


@FAST
@given(st.one_of(
    _junk.filter(lambda v: not isinstance(v, dict)), st.text(max_size=10),
    st.builds(lambda b: _envelope(body=b), st.one_of(
        _not_str.filter(lambda v: v not in (None, False, 0) and v == v),
        st.text(alphabet="!@#$%^&*()", min_size=1, max_size=20),
        st.text(alphabet=string.ascii_letters, min_size=1, max_size=20).filter(
            lambda t: len(t) % 4 != 0))),
    st.builds(lambda p: _envelope(properties=p), st.one_of(
        _not_str, st.just({}), st.just({"delivery_tag": JOB}),
        st.just({"delivery_tag": JOB, "delivery_info": [], "body_encoding": "base64"}),
        st.just({"delivery_info": {}, "body_encoding": "base64"}),
        st.just({"delivery_tag": JOB, "delivery_info": {}, "body_encoding": "rot13"}),
        st.just({"delivery_tag": JOB, "delivery_info": {"exchange": []}}),
        st.just({"delivery_tag": [JOB], "delivery_info": {}}),
        st.just({"delivery_tag": True, "delivery_info": {}}))),
    st.builds(lambda h: _envelope(headers=h), st.one_of(st.lists(st.integers()), st.text(),
                                                        st.integers())),
    st.builds(lambda c: _envelope(**{"content-type": c}), st.one_of(
        st.integers(), st.lists(st.integers())).filter(lambda v: v is not None)),
))
def test_bad_envelopes_are_turned_away(raw: Any) -> None:
    with pytest.raises(BadMessage):
        check_envelope(raw)


# ---------------------------------------------------------------- config files

_cfg_atoms = st.one_of(
    st.sampled_from(['name', 'description', 'memory', 'type', 'disk', 'uuid', 'vcpus',
                     '=', '"', "'", '[', ']', ',', ';', '#', '\\', '\n', ' ', '\t', '\r',
                     '\\\n', '0x', '1' * 40, '0x' + 'f' * 30, '"yes"', '"/abs"', '..', '/',
                     '\x00', 'é', '\ufeff', '"' + 'x' * 200 + '"', "'vdev=xvda'",
                     "'vdev=xvda,type=external,target=/t'", "'/img/a.qcow2,qcow2,xvda,rw'"]),
    st.text(max_size=6),
    st.builds(lambda n: "9" * n, st.integers(19, 6000)),
)
config_texts = st.lists(_cfg_atoms, max_size=40).map("".join)


@settings(max_examples=2700, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(config_texts, st.booleans())
def test_config_parser_never_crashes(text: str, domain: bool) -> None:
    """Any text: a config, or a ConfigFileError/InvalidInput of one line; never another
    exception (issue 7: a 5,000-digit number raised Python's int-digits ValueError)."""
    parse = parse_domain_config if domain else parse_snapshot_config
    try:
        parse(text, path="/etc/x.cfg")
    except InvalidInput as exc:
        assert "\n" not in exc.message.rstrip("\n") or "unterminated" in exc.message, exc
        assert len(exc.message) < 600, exc.message
        assert "Value error" not in exc.message


@pytest.mark.parametrize("digits", [21, 5000, 100_000])
def test_a_huge_number_is_a_one_line_error(digits: int) -> None:
    with pytest.raises(ConfigFileError) as info:
        parse_snapshot_config(f"name = \"s\"\nmemory_size = {'7' * digits}\n", path="/x.cfg")
    msg = info.value.message
    assert msg.startswith("/x.cfg:2: memory_size: number '7777") and "64-bit" in msg
    assert len(msg) < 200 and "\n" not in msg


def test_64_bit_numbers_still_parse() -> None:
    cfg = parse_domain_config('name = "a"\nmemory = 18446744073709551615\nvcpus = 0x10\n')
    assert cfg.memory == 18446744073709551615


def test_the_schedulers_queue_carries_policy_runs_only() -> None:
    """The scheduler's worker (queue domsnap.schedule) takes policy runs, and nothing
    else; a policy run on a host's queue is turned away."""
    from tasks import schedule as _schedule  # registers domsnap.policy.run
    from workers.routing import SCHEDULE_QUEUE, TASK_POLICY_RUN

    run = {"headers": {"task": TASK_POLICY_RUN, "id": JOB}, "body": _celery_body(["nightly"])}
    assert _schedule.policy_run.name in app.tasks
    _check(**run, queue=SCHEDULE_QUEUE)
    with pytest.raises(BadMessage, match="only domsnap.policy.run runs from the scheduler"):
        _check(**run, queue=host_queue(HOST))
    with pytest.raises(BadMessage, match="only domsnap.policy.run runs from the scheduler"):
        _check(queue=SCHEDULE_QUEUE)  # a create sent to the scheduler's queue
