"""The decision domsnap takes for a domain whose ``xl create`` monitor a suspend ended
(workers/drivers/xlmonitor.py), checked against a table written from
``handle_domain_death`` (tools/xl/xl_vmcontrol.c) and xl.cfg(5) over generated states,
reasons and configured actions; and the host-side record of lost monitors."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import DomainConfig
from workers.drivers.xlmonitor import MonitorMarks, configured_action, decide

# xl_info.c list_domains: the fifth flag is "-rscwS"[shutdown reason]
LETTER_REASON = {"-": "poweroff", "r": "reboot", "s": "suspend", "c": "crash",
                 "w": "watchdog", "S": "soft_reset", "?": "unknown"}
XL_DEFAULT = {"poweroff": "destroy", "reboot": "restart", "crash": "destroy",
              "watchdog": "destroy", "soft_reset": "soft-reset"}
ACTIONS = ["destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset"]
# libxl's JSON / enum spellings that a config taken from `xl list -l` may carry
LIBXL_SPELLING = {"rename-restart": "restart_rename", "coredump-destroy": "coredump_destroy",
                  "coredump-restart": "coredump_restart", "soft-reset": "soft_reset"}

flag = st.sampled_from
flags_st = st.builds(lambda r, b, p, s, reason, d: r + b + p + s + reason + d,
                     flag("r-"), flag("b-"), flag("p-"), flag("s-"), flag(list(LETTER_REASON)),
                     flag("d-"))
action_st = st.one_of(st.none(), st.sampled_from(ACTIONS),
                      st.sampled_from(ACTIONS).map(lambda a: LIBXL_SPELLING.get(a, a).upper()),
                      st.sampled_from(["explode", "", "reboot"]))
configs_st = st.fixed_dictionaries(
    {}, optional={f"on_{reason}": action_st for reason in XL_DEFAULT})


def _config(actions: dict[str, str | None]) -> DomainConfig:
    return DomainConfig(name="d", other={k: v for k, v in actions.items() if v is not None})


def _expected(flags: str, actions: dict[str, str | None]) -> tuple[str, bool, bool] | None:
    """(action domsnap takes, core dumped first, noted as not exactly xl's) or None."""
    if flags[3] != "s" or flags[5] == "d" or flags[4] == "s":
        return None
    reason = LETTER_REASON[flags[4]]
    if reason == "unknown":
        return ("destroy", False, False)  # "Unknown shutdown reason code. Destroying domain."
    raw = actions.get(f"on_{reason}")
    if raw is None:
        configured = XL_DEFAULT[reason]
    else:
        spelled = {v.upper(): k for k, v in LIBXL_SPELLING.items()}
        configured = spelled.get(raw.upper(), raw.lower())
        if configured not in ACTIONS:
            return ("preserve", False, True)  # not an action: left alone, said so
    dump = configured.startswith("coredump-")
    action = configured.removeprefix("coredump-") if dump else configured
    if action == "soft-reset":
        return ("restart", False, True)  # no xl verb does a soft reset: restarted instead
    return (action, dump, action == "rename-restart")


@given(flags_st, configs_st)
def test_decision_follows_handle_domain_death(flags: str, actions: dict[str, str | None]
                                              ) -> None:
    got = decide(flags, _config(actions))
    want = _expected(flags, actions)
    if want is None:
        assert got is None
        return
    assert got is not None
    assert (got.action, got.coredump, got.note is not None) == want
    assert got.reason == LETTER_REASON[flags[4]]


@given(st.sampled_from(sorted(XL_DEFAULT)))
def test_xl_defaults_when_the_config_names_no_action(reason: str) -> None:
    assert configured_action(DomainConfig(name="d"), reason) == XL_DEFAULT[reason]


def test_suspend_dying_and_running_are_never_acted_on() -> None:
    cfg = DomainConfig(name="d", other={"on_reboot": "restart"})
    for flags in ("---ss-", "---srd", "r-----", "--p---", "-b----", "----r-"):
        assert decide(flags, cfg) is None, flags
    decision = decide("---sr-", cfg)
    assert decision is not None and decision.action == "restart"
    assert decide("---sr-", DomainConfig(name="d", other={"on_reboot": "destroy"})) \
        is not None
    assert decide("bad", cfg) is None


@settings(deadline=None)  # file I/O on a loaded machine
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 5),
                          st.sampled_from(["lost", "clear", "clear-other"])), max_size=20))
def test_marks_follow_lost_and_cleared_instances(steps: list[tuple[str, int, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        marks = MonitorMarks(Path(tmp) / "nomonitor")
        model: dict[str, int] = {}
        for uuid, domid, what in steps:
            if what == "lost":
                had = model.get(uuid) != domid
                assert marks.lost(uuid, domid, "xl save") == had
                model[uuid] = domid
            elif what == "clear":
                marks.clear(uuid)
                model.pop(uuid, None)
            else:  # clear for another instance: a record of this one stays
                marks.clear(uuid, domid + 100)
            assert marks.uuids() == sorted(model)
            for u, d in model.items():
                got = marks.get(u)
                assert got is not None and got["domid"] == d


def test_a_torn_or_foreign_mark_is_dropped(tmp_path: Path) -> None:
    marks = MonitorMarks(tmp_path / "nomonitor")
    marks.lost("u1", 3, "xl save")
    (tmp_path / "nomonitor" / "u2.json").write_text("{not json")
    (tmp_path / "nomonitor" / "u3.json").write_text(json.dumps({"domid": "7"}))
    assert marks.get("u2") is None and marks.get("u3") is None
    marks.clear("u2")
    marks.clear("u3", 7)
    assert marks.uuids() == ["u1"]
    assert (tmp_path / "nomonitor").stat().st_mode & 0o777 == 0o700
