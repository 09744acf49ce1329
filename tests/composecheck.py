"""Check docker-compose.yml the way a compose CLI reads it, without a compose CLI.

A compose CLI (Debian's docker-compose pulls in a whole Python stack; the v2
plugin is not packaged) is far too heavy to install only to validate one file.
This does the two things ``docker compose config`` does that matter here:

- interpolation as the Compose Specification defines it (``$$``, ``$VAR``,
  ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
  ``${VAR?error}``, ``${VAR:+replacement}``, ``${VAR+replacement}``), raising
  :class:`MissingVariable` where compose refuses to run;
- validation against compose's own JSON Schema (``compose_spec.json`` from the
  docker-compose package on PyPI, fetched by scripts/setup.sh into .cache/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / ".cache" / "compose" / "compose_spec.json"

_TOKEN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bad>))")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) whose variable is not set."""


class BadInterpolation(ValueError):
    """A ``$`` that starts no valid interpolation (compose: "Invalid interpolation format")."""


def interpolate_string(text: str, env: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        if m.group("name") is None:
            raise BadInterpolation(f"invalid interpolation format in {text!r}")
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or value == ""
        if op is None:
            return value or ""
        if op == ":-":
            return arg if unset_or_empty else str(value)
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if (op == ":?" and unset_or_empty) or (op == "?" and value is None):
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return str(value)
        if op == ":+":
            return "" if unset_or_empty else arg
        return "" if value is None else arg  # "+"

    return _TOKEN.sub(sub, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def load(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The file as compose sees it: YAML (merge keys applied), then interpolated."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping")
    out = interpolate(data, env)
    assert isinstance(out, dict)
    return out


def validate(data: dict[str, Any]) -> None:
    """Raise :class:`jsonschema.ValidationError` where compose's schema refuses the file."""
    if not SCHEMA.is_file():
        raise FileNotFoundError(f"{SCHEMA} is missing: run scripts/setup.sh")
    schema = json.loads(SCHEMA.read_text())
    schema.pop("$schema", None)  # its draft-2019-09 URL; the keywords used are draft 7's
    jsonschema.Draft7Validator(schema).validate(data)
