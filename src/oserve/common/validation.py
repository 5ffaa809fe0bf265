"""Turning a pydantic ``ValidationError`` into the one-line ``ConfigError`` a user reads.

Config types are pydantic models with unknown keys rejected; whoever builds one from user input (a CLI
flag, a JSON file) names the source, and the message names the field (or the flag it came from).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from oserve.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def first_error(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    """``field: problem`` for the first error (``names`` maps a field path to what the user typed)."""
    err = exc.errors()[0]
    path = ".".join(str(p) for p in err["loc"])
    where = (names or {}).get(path) or (names or {}).get(str(err["loc"][0]) if err["loc"] else "") or path
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(exc.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def build(model: type[M], data: Mapping[str, Any], source: str = "",
          names: Mapping[str, str] | None = None) -> M:
    """``model(**data)``, or a ``ConfigError`` naming ``source`` and the first bad field."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        prefix = f"{source}: " if source else ""
        raise ConfigError(prefix + first_error(exc, names)) from None


__all__ = ["build", "first_error"]


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A pydantic ``AfterValidator`` check: the value must be one of ``choices`` (the error lists them).

    Use as ``field: Annotated[str, AfterValidator(one_of(CHOICES))] = default``."""
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got '{value}'")
        return value
    return check
