"""The two helpers every Redis boundary of domsnap shares: redis-py errors become
StoreUnavailable (:func:`_translated`), and a record that does not parse becomes
SchemaMismatch or BackendError, never a pydantic error (:func:`_load`).

Kept apart from :mod:`domsnap.store` so that the store's parts
(:mod:`domsnap.snapindex`) and :mod:`domsnap.policies` use the same ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import redis
from pydantic import ValidationError

from domsnap.errors import BackendError, SchemaMismatch, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")


def _translated(fn: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    return wrapper


def _load(model: type[T], raw: str | bytes, what: str) -> T:
    """A record from its JSON; another schema version is SchemaMismatch, anything else
    that does not parse is a corrupt record (BackendError), never a pydantic error."""
    try:
        return model.model_validate_json(raw)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        for err in exc.errors():
            if tuple(err["loc"]) == ("schema_version",):
                raise SchemaMismatch(f"{what}: {err['msg']}") from exc
        raise BackendError(f"{what}: corrupt record in Redis: {exc.errors()[0]['msg']}") from exc
