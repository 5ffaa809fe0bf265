"""YAML parsing for the catalogs and calibration: libyaml's C parser when PyYAML has it, else PyYAML's own.

The C loader builds the same documents about 10x faster, which matters at start-up (every command reads
the model, GPU and calibration files). On a syntax error the file is parsed again with the pure-Python
loader, so that the error raised, with its message and position, is the same with or without libyaml.
"""

from __future__ import annotations

from typing import Any

import yaml

_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``, through the C parser where available."""
    try:
        return yaml.load(text, Loader=_FAST_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError:
        return yaml.safe_load(text)  # the reference error (or, should libyaml be stricter, the document)


__all__ = ["safe_load"]
