"""The one error hierarchy of oserve.

Every error a user can trigger is an ``OServeError``; the CLI prints its message and exits non-zero, and
the gateway maps the subclasses to HTTP status codes in one place.
"""

from __future__ import annotations


class OServeError(Exception):
    """Base class of every error oserve raises on purpose."""


class ConfigError(OServeError):
    """A configuration value (catalog entry, cluster spec, CLI flag) is invalid or unknown."""


class InputFormatError(OServeError):
    """A user-supplied file is malformed. The message names the file, the line and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class InfeasiblePlanError(OServeError):
    """No deployment of the model fits the cluster (e.g. the weights do not fit in memory)."""
