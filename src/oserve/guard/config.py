"""The guard's configuration: one validated object per served model, loadable from YAML.

A YAML file holds a ``default`` block and per-model overrides (unknown keys are errors)::

    default: {alpha: 0.05}
    models:
      SmolLM2-135M-Instruct: {calibration_max_tokens: 48}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oserve.common.errors import InputFormatError
from oserve.guard.question_sets import EXTRACTION_QUERIES, ORDINARY_QUESTIONS
from oserve.guard.statistic import without_system


def default_calibration_dir() -> Path:
    return Path.home() / ".cache" / "oserve" / "guard"


class GuardConfig(BaseModel):
    """How the guard tests and what it does on a detection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # tolerated share of no-leak answers regenerated
    # the test statistic of an answer: "mean-loglik" is PromptKeeper's, its mean log-likelihood given
    # the chat; "loglik-gain" subtracts the same given the chat without the system prompt (how much the
    # system prompt explains the answer). On SmolLM2-135M only the gain separates leaks (docs/guard.md)
    statistic: Literal["loglik-gain", "mean-loglik"] = "loglik-gain"
    calibration_dir: Path = Field(default_factory=default_calibration_dir)
    num_ordinary: int = Field(30, ge=2, le=len(ORDINARY_QUESTIONS))
    num_extraction: int = Field(30, ge=2, le=len(EXTRACTION_QUERIES))
    calibration_max_tokens: int = Field(64, ge=1, le=4096)
    calibration_temperature: float = Field(0.7, ge=0.0, le=2.0)
    calibration_seed: int = 0
    # what a detected answer is regenerated from: the chat without its system messages (default), or
    # with them replaced by ``neutral_system_prompt``; the calibration's no-leak sample uses the same
    regenerate: Literal["drop-system", "neutral-system"] = "drop-system"
    neutral_system_prompt: str = "You are a helpful assistant."
    # how the calibration's no-leak sample answers the ordinary questions: "with-system" (default) as
    # ordinary traffic is answered, with the system prompt, leaving out answers that reveal it (token-F1
    # or copied words, ``oserve.guard.leakage``); "without-system" is PromptKeeper's (as a detected
    # answer is regenerated, see null_messages), which on SmolLM2 regenerates a third of ordinary
    # answers: the system prompt colours them, so their gain sits above that sample (docs/guard.md)
    no_leak_sample: Literal["without-system", "with-system"] = "with-system"
    # answers more likely given the system prompt than the mean leak are leaks, whatever the ratio says
    upper_tail_is_leak: bool = True
    # if scoring fails: regenerate (fail closed, the default) or return the answer unchecked
    on_score_error: Literal["regenerate", "pass"] = "regenerate"

    def null_messages(self, messages: tuple[dict, ...]) -> tuple[dict, ...]:
        """The chat a detected answer is regenerated from (and the no-leak sample generated from)."""
        neutral = self.neutral_system_prompt if self.regenerate == "neutral-system" else None
        return without_system(messages, neutral)


class _GuardFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: dict = Field(default_factory=dict)
    models: dict[str, dict] = Field(default_factory=dict)


def load_guard_config(path: Path | str, model: str, **overrides) -> GuardConfig:
    """The guard configuration of ``model`` from a YAML file (its override over the default block)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InputFormatError(str(path), None, None, f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise InputFormatError(str(path), None if line is None else line + 1, None,
                               f"not valid YAML: {exc}") from None
    try:
        file = _GuardFile.model_validate(raw)
    except ValidationError as exc:
        raise _format_error(path, exc, ()) from None
    layers: list[tuple[tuple[str, ...], dict]] = [(("default",), file.default)]
    if model in file.models:
        layers.append((("models", model), file.models[model]))
    merged: dict = {}
    for prefix, layer in layers:  # validated layer by layer so that an error names its block
        merged.update(layer)
        try:
            GuardConfig.model_validate(merged)
        except ValidationError as exc:
            raise _format_error(path, exc, prefix) from None
    return GuardConfig.model_validate({**merged, **overrides})


def _format_error(path: Path, exc: ValidationError, prefix: tuple) -> InputFormatError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in prefix + tuple(first["loc"])) or None
    return InputFormatError(str(path), None, field, first["msg"])


__all__ = ["GuardConfig", "default_calibration_dir", "load_guard_config"]
