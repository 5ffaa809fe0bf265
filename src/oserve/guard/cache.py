"""Calibrations on disk, one JSON file per (model, system prompt), named by the model and a hash.

The system prompt itself is never written: files carry its SHA-256 only. A file that does not parse or
does not validate is an ``InputFormatError`` naming the file and the field; a valid file made with other
sampling settings is stale and ``load`` returns None for it (the caller recalibrates).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oserve.common.errors import InputFormatError
from oserve.guard.calibration import CALIBRATION_VERSION, Calibration, SamplingSettings, prompt_sha256
from oserve.guard.config import GuardConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _SamplingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_ordinary: int = Field(ge=2)
    num_extraction: int = Field(ge=2)
    max_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0.0)
    seed: int
    regenerate: str
    neutral_system_prompt: str
    statistic: Literal["loglik-gain", "mean-loglik"]
    no_leak_sample: Literal["without-system", "with-system"] = "without-system"


class _CalibrationFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    model: str = Field(min_length=1)
    system_prompt_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    alpha: float = Field(gt=0.0, lt=1.0)
    upper_tail_is_leak: bool = True
    no_leak_values: list[float] = Field(min_length=2)
    leak_values: list[float] = Field(min_length=2)
    sampling: _SamplingFile
    calibration_s: float = Field(ge=0.0)
    created_unix: float = 0.0


def read_calibration(path: Path | str) -> Calibration:
    """A calibration file, validated; errors name the file and the field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise InputFormatError(str(path), None, None, f"cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise InputFormatError(str(path), exc.lineno, None, f"not valid JSON: {exc.msg}") from None
    try:
        data = _CalibrationFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InputFormatError(str(path), None, field, first["msg"]) from None
    if data.version != CALIBRATION_VERSION:
        raise InputFormatError(str(path), None, "version",
                               f"calibration format {data.version}; this oserve reads {CALIBRATION_VERSION}")
    for name in ("no_leak_values", "leak_values"):
        values = getattr(data, name)
        bad = [v for v in values if not math.isfinite(v)]
        if data.sampling.statistic == "mean-loglik":
            bad += [v for v in values if v > 1e-6]
        if bad:
            raise InputFormatError(str(path), None, name, f"{bad[0]} is not a possible "
                                   f"{data.sampling.statistic} value")
    return Calibration(data.model, data.system_prompt_sha256, tuple(data.no_leak_values),
                       tuple(data.leak_values), SamplingSettings(**data.sampling.model_dump()),
                       data.alpha, data.upper_tail_is_leak, data.calibration_s, data.created_unix)


class CalibrationCache:
    """Calibrations under one directory, keyed by model name and system-prompt hash."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def path_for(self, model: str, system_prompt: str) -> Path:
        slug = _UNSAFE.sub("_", model).strip("_")[:80] or "model"
        return self.directory / f"{slug}-{prompt_sha256(system_prompt)[:24]}.json"

    def load(self, model: str, system_prompt: str, config: GuardConfig) -> Calibration | None:
        """The cached calibration under ``config``'s test, None if absent or made with other settings."""
        path = self.path_for(model, system_prompt)
        if not path.exists():
            return None
        calibration = read_calibration(path)
        for name, want in (("model", model), ("system_prompt_sha256", prompt_sha256(system_prompt))):
            if getattr(calibration, name) != want:
                raise InputFormatError(str(path), None, name, f"is {getattr(calibration, name)!r} but "
                                       f"the file is keyed for {want!r}")
        if calibration.sampling != SamplingSettings.of(config):
            return None
        return calibration.with_test(config.alpha, config.upper_tail_is_leak)

    def save(self, calibration: Calibration, system_prompt: str) -> Path:
        """Write atomically (a temporary file renamed into place), so readers never see half a file."""
        if prompt_sha256(system_prompt) != calibration.system_prompt_sha256:
            raise ValueError("calibration was made for another system prompt")
        path = self.path_for(calibration.model, system_prompt)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as out:
            json.dump(calibration.to_dict(), out, indent=1)
        os.replace(tmp, path)
        return path


__all__ = ["CalibrationCache", "read_calibration"]
