"""The boundary where pydantic's validation errors become domsnap's errors:
SchemaMismatch for a message of another schema version, InvalidInput otherwise.

Messages name the field and the reason in domsnap's words: pydantic's own prefixes
("Value error, ", "Assertion failed, ") are dropped here, and nothing else
formats pydantic errors for users."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from domsnap.errors import InvalidInput, SchemaMismatch

M = TypeVar("M", bound=BaseModel)

_PREFIXES = ("Value error, ", "Assertion failed, ")


def reason(err: ErrorDetails) -> str:
    """The reason of one pydantic error, without pydantic's prefix."""
    msg = str(err["msg"])
    for prefix in _PREFIXES:
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def parse_model(model: type[M], data: Any) -> M:
    """``data`` validated as ``model``; the error names the first bad field and why."""
    if not isinstance(data, dict) and not isinstance(data, model):
        raise InvalidInput(f"body: a {model.__name__} is a JSON object, not "
                           f"{type(data).__name__}", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for err in errors:
            if err["loc"] and err["loc"][-1] == "schema_version":
                raise SchemaMismatch(f"schema_version: {reason(err)}") from None
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise InvalidInput(f"{field}: {reason(first)}", field=field) from None
