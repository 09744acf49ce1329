"""The subprocess runner: real (tiny) subprocesses, and the recording runner for tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from domsnap.errors import CommandFailed
from workers.hostio.runner import Call, Completed, RecordingRunner, Runner, SubprocessRunner


@pytest.fixture
def run() -> SubprocessRunner:
    return SubprocessRunner()


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie awaiting its reaper)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_true_succeeds(run: SubprocessRunner) -> None:
    done = run(["true"], timeout=5)
    assert done == Completed(["true"], 0, "", "", done.duration_s)
    assert done.duration_s >= 0


def test_false_raises_with_argv_and_code(run: SubprocessRunner) -> None:
    with pytest.raises(CommandFailed) as info:
        run(["false"], timeout=5)
    assert info.value.argv == ["false"]
    assert info.value.returncode == 1
    assert "exit 1" in str(info.value)


def test_check_false_returns_the_failure(run: SubprocessRunner) -> None:
    done = run(["false"], timeout=5, check=False)
    assert done.returncode == 1


def test_failure_keeps_stderr_and_stdout(run: SubprocessRunner) -> None:
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo out; echo oops >&2; exit 3"], timeout=5)
    err = info.value
    assert (err.returncode, err.stderr, err.stdout) == (3, "oops\n", "out\n")
    assert str(err) == "sh failed (exit 3): oops"
    assert err.to_dict()["details"]["argv"] == ["sh", "-c", "echo out; echo oops >&2; exit 3"]


def test_timeout_kills_the_whole_process_group(run: SubprocessRunner) -> None:
    started = time.monotonic()
    with pytest.raises(CommandFailed) as info:
        # The shell starts a background sleep and reports its pid before waiting.
        run(["sh", "-c", "sleep 60 & echo $!; wait"], timeout=0.5)
    assert time.monotonic() - started < 5
    err = info.value
    assert err.returncode is None
    assert "timed out" in str(err)
    assert "0.5s timeout" in err.stderr
    grandchild = int(err.stdout.split()[0])
    assert _gone(grandchild), "the background child survived the timeout"


def test_sleep_within_timeout_measures_duration(run: SubprocessRunner) -> None:
    done = run(["sleep", "0.2"], timeout=5)
    assert done.returncode == 0
    assert 0.2 <= done.duration_s < 5


def test_missing_binary_is_127(run: SubprocessRunner) -> None:
    with pytest.raises(CommandFailed) as info:
        run(["domsnap-no-such-binary", "x"], timeout=5)
    assert info.value.returncode == 127
    assert "not found" in info.value.stderr
    assert info.value.argv == ["domsnap-no-such-binary", "x"]


def test_not_executable_is_126(run: SubprocessRunner, tmp_path: Path) -> None:
    script = os.path.join(tmp_path, "script")
    with open(script, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(script, 0o644)
    with pytest.raises(CommandFailed) as info:
        run([script], timeout=5)
    assert info.value.returncode == 126


def test_lc_all_is_c_and_env_extra_is_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    run = SubprocessRunner(env_extra={"DOMSNAP_TEST_VAR": "42", "LC_ALL": "fr_FR.UTF-8"})
    assert run(["printenv", "LC_ALL"], timeout=5).stdout == "C\n"
    assert run(["printenv", "DOMSNAP_TEST_VAR"], timeout=5).stdout == "42\n"
    assert run(["printenv", "PATH"], timeout=5).stdout.strip() == os.environ["PATH"]


def test_stdin_is_devnull_unless_input_given(run: SubprocessRunner) -> None:
    assert run(["cat"], timeout=5).stdout == ""
    assert run(["cat"], timeout=5, input=b"hello\n").stdout == "hello\n"


def test_undecodable_output_is_replaced(run: SubprocessRunner) -> None:
    assert run(["printf", "a\\377b"], timeout=5).stdout == "a\ufffdb"


def test_a_shell_string_is_rejected(run: SubprocessRunner) -> None:
    with pytest.raises(TypeError):
        run("echo hi", timeout=5)


def test_subprocess_runner_is_a_runner() -> None:
    runner: Runner = SubprocessRunner()
    assert runner(["true"], timeout=5).returncode == 0


# -- RecordingRunner -----------------------------------------------------------


def test_recording_runner_records_and_answers_in_order() -> None:
    rec = RecordingRunner([RecordingRunner.result("one\n"), RecordingRunner.result("two\n")])
    runner: Runner = rec
    assert runner(["a", "1"], timeout=3).stdout == "one\n"
    done = runner(["b"], timeout=4, input=b"x")
    assert done.stdout == "two\n"
    assert done.argv == ["b"]
    assert rec.argvs == [["a", "1"], ["b"]]
    assert rec.calls[1] == Call(argv=["b"], timeout=4, check=True, input=b"x")


def test_recording_runner_checks_like_the_real_one() -> None:
    rec = RecordingRunner([RecordingRunner.result(returncode=2, stderr="bad\n")] * 2)
    with pytest.raises(CommandFailed) as info:
        rec(["tool", "arg"], timeout=1)
    assert (info.value.argv, info.value.returncode, info.value.stderr) == (
        ["tool", "arg"],
        2,
        "bad\n",
    )
    assert rec(["tool"], timeout=1, check=False).returncode == 2


def test_recording_runner_raises_scripted_exceptions() -> None:
    boom = CommandFailed(["x"], None, "killed")
    rec = RecordingRunner([boom])
    with pytest.raises(CommandFailed) as info:
        rec(["x"], timeout=1)
    assert info.value is boom


def test_recording_runner_fails_on_unexpected_calls() -> None:
    rec = RecordingRunner([])
    with pytest.raises(AssertionError, match="unexpected command"):
        rec(["surprise"], timeout=1)
    assert rec.argvs == [["surprise"]]


def test_recording_runner_with_callable_and_default() -> None:
    def answer(call: Call) -> Completed:
        return RecordingRunner.result(" ".join(call.argv[1:]))

    assert RecordingRunner(answer)(["echo", "a", "b"], timeout=1).stdout == "a b"
    default = RecordingRunner()
    assert default(["anything"], timeout=1) == Completed(["anything"], 0, "", "", 0.0)


# ---------------------------------------------------------------- outlive (xl save & co.)


def test_outlive_returns_what_pipes_would(run: SubprocessRunner) -> None:
    argv = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    done = run(argv, timeout=10, check=False, outlive=True)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandFailed) as exc:
        run(argv, timeout=10, outlive=True)
    assert exc.value.returncode == 3 and exc.value.stderr == "err\n"


def test_outlive_still_times_out_and_kills_the_group(run: SubprocessRunner,
                                                     tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    with pytest.raises(CommandFailed) as exc:
        run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; echo started >&2; wait"],
            timeout=1, outlive=True)
    assert exc.value.returncode is None
    assert "started" in exc.value.stderr and "timeout" in exc.value.stderr
    assert _gone(int(pidfile.read_text()))


def _caller_killed_mid_command(tmp_path: Path, *, outlive: bool) -> Path:
    """A caller process runs a command that writes to stderr after the caller was
    SIGKILLed; returns the file the command writes once it finished."""
    import signal
    import subprocess
    import sys

    done = tmp_path / f"done-{outlive}"
    started = tmp_path / f"started-{outlive}"
    code = ("import sys\n"
            "from workers.hostio.runner import SubprocessRunner\n"
            f"SubprocessRunner()(['sh', '-c', 'echo $$ > {started}.tmp; "
            f"mv {started}.tmp {started}; sleep 1; echo progress >&2; "
            f"echo progress >&2; touch {done}'], timeout=30, outlive={outlive})\n")
    repo = Path(__file__).resolve().parents[2]
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=repo,
                              env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline and caller.poll() is None
        time.sleep(0.02)
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    assert _gone(int(started.read_text()), within=30)  # the command ended, one way or other
    return done


def test_a_command_run_to_outlive_its_caller_finishes_after_the_caller_dies(
        tmp_path: Path) -> None:
    assert _caller_killed_mid_command(tmp_path, outlive=True).exists()


def test_a_piped_command_dies_with_its_caller(tmp_path: Path) -> None:
    """What ``outlive`` is for: the same command on pipes dies of SIGPIPE at its first
    write after the caller's death (as ``xl save`` did, exit 141 in a shell)."""
    assert not _caller_killed_mid_command(tmp_path, outlive=False).exists()


def test_recording_runner_records_outlive() -> None:
    rec = RecordingRunner()
    rec(["xl", "save", "3", "/f"], timeout=5, outlive=True)
    assert rec.calls == [Call(["xl", "save", "3", "/f"], 5, True, None, True)]


def test_outlive_hands_over_stderr_lines_as_they_are_written(run: SubprocessRunner) -> None:
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    done = run(["sh", "-c", "echo one >&2; sleep 0.5; printf 'two\\nthree' >&2; echo out"],
               timeout=10, outlive=True, stderr_lines=lambda ln: seen.append(
                   (time.monotonic() - t0, ln)))
    assert [ln for _, ln in seen] == ["one", "two", "three"]
    assert seen[0][0] < 0.4 <= seen[1][0]  # "one" came before the sleep, not at the end
    assert done.stderr == "one\ntwo\nthree" and done.stdout == "out\n"


def test_stderr_lines_with_a_timeout_still_kill_the_group(run: SubprocessRunner) -> None:
    seen: list[str] = []
    with pytest.raises(CommandFailed) as info:
        run(["sh", "-c", "echo started >&2; sleep 30"], timeout=0.5, outlive=True,
            stderr_lines=seen.append)
    assert info.value.returncode is None and seen == ["started"]
    with pytest.raises(ValueError):
        run(["true"], timeout=5, stderr_lines=seen.append)
