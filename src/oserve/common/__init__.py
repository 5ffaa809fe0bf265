"""Pieces every layer shares: the error hierarchy and small helpers."""

from oserve.common.errors import (
    ConfigError,
    InfeasiblePlanError,
    InputFormatError,
    OServeError,
)

__all__ = ["ConfigError", "InfeasiblePlanError", "InputFormatError", "OServeError"]
