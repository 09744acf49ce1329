"""The boundary where pydantic's validation errors become domsnap's errors:
SchemaMismatch for a message of another schema version, InvalidInput otherwise."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from domsnap.errors import InvalidInput, SchemaMismatch

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any) -> M:
    """``data`` validated as ``model``; the error names the first bad field and why."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] and err["loc"][-1] == "schema_version":
                raise SchemaMismatch(f"schema_version: {err['msg']}") from None
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
