"""The deployment files and the README agree with the code.

- docker-compose.yml: Redis persists (AOF) and needs a password, Flower needs basic
  auth, the qemu worker gets /dev/kvm and runs ``domsnap worker``, and no secret is
  written in the file (only ``${VAR}`` interpolations).
- compose would accept the file: its interpolation and compose's own JSON Schema
  (tests/composecheck.py; no compose CLI is installed for this).
- Every ``domsnap <command>`` in README.md code blocks is a real command, its long
  options exist, and every ``DOMSNAP_*`` variable the README names is a setting.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml  # PyYAML: a test dependency (not skipped when missing: that would hide it)

from domsnap.settings import Settings
from tests import composecheck

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
README = REPO / "README.md"
DOMSNAP = [sys.executable, "-c", "from domsnap.cli import main; main()"]
FAKE_SECRETS = {"REDIS_PASSWORD": "x-test-password", "FLOWER_BASIC_AUTH": "a:b"}

# A compose interpolation of a variable, e.g. ${REDIS_PASSWORD:?set it}.
INTERP = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(?:(?::?[-?+])[^}]*)?\}$")
SECRET_KEY = re.compile(r"PASS|SECRET|TOKEN|AUTH|CREDENTIAL|PRIVATE", re.I)


# ------------------------------------------------------------------ helpers


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def service(name: str) -> dict[str, Any]:
    services = compose().get("services") or {}
    assert name in services, f"docker-compose.yml has no service {name!r}"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def argv(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    if isinstance(cmd, str):
        return cmd.split()
    assert isinstance(cmd, list), f"command must be a list or string, not {cmd!r}"
    return [str(c) for c in cmd]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, string) in the parsed YAML, keys included."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k)
            yield from strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def is_interpolated(value: str) -> bool:
    return bool(INTERP.match(value.strip()))


def option_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in an argv."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
    return None


# ------------------------------------------------------------------ docker-compose.yml


def test_compose_has_the_services() -> None:
    assert {"redis", "scheduler", "flower", "worker"} <= set(compose()["services"])


def test_redis_persists_and_requires_a_password_from_the_environment() -> None:
    redis = service("redis")
    assert str(redis["image"]).startswith("redis:7")
    args = argv(redis)
    assert option_value(args, "--appendonly") == "yes", "Redis must persist with AOF"
    password = option_value(args, "--requirepass")
    assert password is not None, "Redis must require a password"
    assert is_interpolated(password) and "REDIS_PASSWORD" in password, password
    assert ":?" in password, "a missing REDIS_PASSWORD must stop compose, not default"
    assert redis.get("volumes"), "Redis data must live in a volume"
    test = redis.get("healthcheck", {}).get("test")
    assert test and "redis-cli" in str(test) and "-a" in str(test)


def test_flower_uses_basic_auth_from_the_environment() -> None:
    flower = service("flower")
    assert str(flower["image"]).startswith("mher/flower")
    args = argv(flower)
    auth = option_value(args, "--basic_auth")
    if auth is None:
        auth = environment(flower).get("FLOWER_BASIC_AUTH")
    assert auth is not None, "Flower must require basic auth"
    assert is_interpolated(auth) and "FLOWER_BASIC_AUTH" in auth, auth
    assert any("5555" in str(p) for p in flower.get("ports", []))


def test_worker_gets_kvm_and_runs_domsnap_worker() -> None:
    worker = service("worker")
    assert "build" in worker
    devices = [str(d) for d in worker.get("devices", [])]
    assert any(d.split(":")[0] == "/dev/kvm" for d in devices), devices
    assert worker.get("privileged", False) is False
    args = argv(worker)
    assert args[:2] == ["domsnap", "worker"], args
    assert "${REDIS_PASSWORD" in environment(worker).get("DOMSNAP_REDIS_URL", "")
    targets = [str(v).split(":")[1] for v in worker.get("volumes", []) if ":" in str(v)]
    assert "/var/lib/domsnap" in targets, targets


def test_scheduler_runs_the_policies_from_the_domsnap_image() -> None:
    """`domsnap scheduler` is Celery beat on domsnap's redbeat scheduler plus the
    policy-run worker (workers/scheduler.py), with the metrics port."""
    from domsnap.settings import Settings
    from workers.scheduler import argv as scheduler_argv

    scheduler = service("scheduler")
    args = argv(scheduler)
    assert args[:2] == ["domsnap", "scheduler"], args
    assert option_value(args, "--metrics-port") == "9464"
    assert any("9464" in str(p) for p in scheduler.get("ports", []))
    assert scheduler.get("image") == service("worker").get("image")
    assert "${REDIS_PASSWORD" in environment(scheduler).get("DOMSNAP_REDIS_URL", "")
    beat, worker = scheduler_argv(Settings(), concurrency=2, loglevel="INFO", node="n")
    assert beat[4:8] == ["tasks.schedule", "beat", "-S", "tasks.schedule:PolicyScheduler"]
    assert worker[4:8] == ["tasks.schedule", "worker", "-Q", "domsnap.schedule"]


def test_compose_file_holds_no_literal_secret() -> None:
    problems: list[str] = []
    for path, value in strings(compose()):
        for m in re.finditer(r"://[^/@\s:]*:([^@/\s]+)@", value):
            if not m.group(1).startswith("${"):
                problems.append(f"{path}: password in URL {value!r}")
        for flag in ("--requirepass", "--basic_auth", "--masterauth"):
            if value.startswith(flag + "=") and not is_interpolated(value.split("=", 1)[1]):
                problems.append(f"{path}: {value!r}")
    for name, svc in compose()["services"].items():
        args = argv(svc) if "command" in svc else []
        for flag in ("--requirepass", "--masterauth"):
            v = option_value(args, flag)
            if v is not None and not is_interpolated(v):
                problems.append(f"services.{name}.command: {flag} {v!r}")
        for key, value in environment(svc).items():
            if SECRET_KEY.search(key) and value and "${" not in value:
                problems.append(f"services.{name}.environment.{key} = {value!r}")
    assert not problems, "literal secrets in docker-compose.yml:\n" + "\n".join(problems)


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm\b", dockerfile, re.M)
    assert "qemu-system-x86" in dockerfile and "qemu-utils" in dockerfile
    assert "ENTRYPOINT" not in dockerfile
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip().strip("/") for line in lines}
    for entry in (".venv", ".cache", ".git"):
        assert entry in ignored, entry
    assert any("__pycache__" in e for e in ignored)


def test_compose_schema_accepts_the_file() -> None:
    """What ``docker compose config`` checks: interpolation, then compose's JSON Schema."""
    data = composecheck.load(COMPOSE, FAKE_SECRETS)
    composecheck.validate(data)
    cmd = data["services"]["redis"]["command"]
    assert "x-test-password" in cmd  # the secret came from the environment


def test_compose_refuses_to_run_without_the_secrets() -> None:
    for missing in FAKE_SECRETS:
        env = {k: v for k, v in FAKE_SECRETS.items() if k != missing}
        with pytest.raises(composecheck.MissingVariable, match=missing):
            composecheck.load(COMPOSE, env)


def test_compose_schema_check_catches_what_compose_refuses() -> None:
    """The schema check is real: a misspelt service key or a wrong type fails it."""
    data = composecheck.load(COMPOSE, FAKE_SECRETS)
    bad = {**data, "services": {**data["services"],
                                "redis": {**data["services"]["redis"], "restrat": "always"}}}
    with pytest.raises(jsonschema.ValidationError, match="restrat"):
        composecheck.validate(bad)
    bad = {**data, "services": {**data["services"],
                                "redis": {**data["services"]["redis"], "ports": "6379"}}}
    with pytest.raises(jsonschema.ValidationError):
        composecheck.validate(bad)


@pytest.mark.parametrize(("text", "env", "want"), [
    ("$$HOME", {}, "$HOME"),
    ("${A}", {"A": "x"}, "x"),
    ("$A-b", {"A": "x"}, "x-b"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A-d}", {}, "d"),
    ("${A:+r}", {"A": "x"}, "r"),
    ("${A:+r}", {"A": ""}, ""),
    ("${A+r}", {"A": ""}, "r"),
    ("${A:?e}", {"A": "v"}, "v"),
])
def test_compose_interpolation(text: str, env: dict[str, str], want: str) -> None:
    assert composecheck.interpolate_string(text, env) == want


@pytest.mark.parametrize(("text", "env"), [("${A:?e}", {"A": ""}), ("${A?e}", {})])
def test_compose_interpolation_refuses_missing(text: str, env: dict[str, str]) -> None:
    with pytest.raises(composecheck.MissingVariable):
        composecheck.interpolate_string(text, env)


def test_compose_interpolation_refuses_bad_syntax() -> None:
    with pytest.raises(composecheck.BadInterpolation):
        composecheck.interpolate_string("${A", {})


# ------------------------------------------------------------------ README.md


def readme_code_blocks() -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", README.read_text(), re.M | re.S)


# `domsnap CMD ...` at a command position (a path prefix like .venv/bin/ is fine);
# not `/var/lib/domsnap`, `domsnap.client`, `domsnap:job:`, `image: domsnap:local`.
CMD_RE = re.compile(r"(?<![\w.:/-])(?:[\w.-]*/)*domsnap[ \t]+([a-z][a-z0-9-]*)([^\n]*)")


def readme_commands() -> list[tuple[str, str]]:
    out = []
    for block in readme_code_blocks():
        for m in CMD_RE.finditer(block):
            rest = re.split(r"\s#|\||&&|;|`", m.group(2))[0]
            out.append((m.group(1), rest))
    return out


def run_help(*args: str) -> str:
    proc = subprocess.run([*DOMSNAP, *args, "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@functools.cache
def cli_commands() -> set[str]:
    text = run_help()
    section = text.split("Commands:", 1)[1]
    return {line.split()[0] for line in section.splitlines()
            if line.startswith("  ") and line.strip()}


def test_readme_names_domsnap_commands() -> None:
    used = {cmd for cmd, _ in readme_commands()}
    assert len(used) >= 8, f"README code blocks name too few domsnap commands: {used}"


def test_every_readme_command_exists() -> None:
    unknown = sorted({cmd for cmd, _ in readme_commands()} - cli_commands())
    assert not unknown, f"README uses commands that `domsnap --help` lacks: {unknown}"


def test_every_cli_command_is_in_the_readme() -> None:
    missing = sorted(cli_commands() - {cmd for cmd, _ in readme_commands()})
    assert not missing, f"README code blocks never show: {missing}"


def test_readme_command_options_exist() -> None:
    helps: dict[str, str] = {}
    bad: list[str] = []
    for cmd, rest in readme_commands():
        if cmd not in cli_commands():
            continue
        text = helps.setdefault(cmd, run_help(cmd))
        for opt in re.findall(r"(?<!\S)(--?[A-Za-z][\w-]*)", rest):
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text):
                bad.append(f"domsnap {cmd} {opt}")
    assert not bad, f"README uses options that --help does not list: {bad}"


# Read verbatim by the code without being a Settings field: DOMSNAP_CONFIG (the TOML
# file, read in domsnap/settings.py) and test-only knobs read under tests/.
def _read_by_code(var: str) -> bool:
    sources = [REPO / "domsnap" / "settings.py", *sorted((REPO / "tests").rglob("*.py"))]
    return any(var in p.read_text() for p in sources if p.name != Path(__file__).name)


def test_every_readme_env_var_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    named = set(re.findall(r"\bDOMSNAP_[A-Z0-9_]*[A-Z0-9]\b", README.read_text()))
    assert "DOMSNAP_REDIS_URL" in named
    unknown = sorted(v for v in named
                     if v[len("DOMSNAP_"):].lower() not in fields and not _read_by_code(v))
    assert not unknown, f"README names DOMSNAP_ variables that are no setting: {unknown}"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text()
    missing = sorted(f"DOMSNAP_{f.upper()}" for f in Settings.model_fields
                     if f"DOMSNAP_{f.upper()}" not in text)
    assert not missing, f"README's settings table lacks: {missing}"


# ---------------------------------------------------------------- dom0 systemd unit

SYSTEMD = REPO / "scripts" / "systemd"


def _unit() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (SYSTEMD / "domsnap-worker.service").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key] = value
    return sections


def test_worker_unit_runs_the_xl_worker_with_secrets_from_a_file() -> None:
    unit = _unit()
    svc = unit["Service"]
    argv = svc["ExecStart"].split()
    assert argv[0].endswith("/bin/domsnap") and argv[1:] == ["worker", "--driver", "xl"]
    assert svc["EnvironmentFile"] == "/etc/domsnap/domsnap.env"
    assert svc["Restart"] == "always" and svc["UMask"] == "0077"
    assert "Environment" not in svc  # nothing secret in a world-readable unit
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "xen" in unit["Unit"]["After"]


def test_worker_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """systemd's own checker, with ExecStart pointed at this checkout's domsnap."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is installed by scripts/setup.sh"
    domsnap = Path(sys.executable).parent / "domsnap"
    text = (SYSTEMD / "domsnap-worker.service").read_text().replace(
        "/opt/domsnap/.venv/bin/domsnap", str(domsnap))
    unit = tmp_path / "domsnap-worker.service"
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "domsnap-worker.service" in line and "Unknown" in line]
    assert proc.returncode == 0 or not problems, proc.stderr


def test_env_example_names_only_settings() -> None:
    fields = set(Settings.model_fields)
    for line in (SYSTEMD / "domsnap.env.example").read_text().splitlines():
        line = line.lstrip("#").strip()
        if not line.startswith("DOMSNAP_"):
            continue
        key = line.split("=", 1)[0]
        assert key.removeprefix("DOMSNAP_").lower() in fields, key
