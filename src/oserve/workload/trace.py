"""Request traces: loading (Azure CSV, Mooncake JSONL, generic CSV), validation and transforms.

A trace is three aligned arrays sorted by arrival: arrival time in seconds from the first request, prompt
length and output length in tokens. Every loader reports malformed input with file, line and field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from oserve.common.errors import ConfigError, InputFormatError
from oserve.workload import fast_csv

BUILTIN_TRACES = {
    "azure-conv": ("azure2023_conv.csv",),
    "azure-code": ("azure2023_code.csv",),
    "azure-mix": ("azure2023_conv.csv", "azure2023_code.csv"),
}

# A request longer than this is a corrupt field, not a prompt: no model's context comes near it, and
# counts of 1e30 would overflow the int64 arrays.
MAX_TOKENS_PER_REQUEST = 10_000_000

# Column names the generic CSV loader accepts, first match wins.
TIME_COLUMNS_S = ("arrival_s", "timestamp_s", "time_s")
TIME_COLUMNS_MS = ("timestamp_ms", "arrival_ms", "timestamp")
INPUT_COLUMNS = ("input_tokens", "input_length", "prompt_tokens", "ContextTokens")
OUTPUT_COLUMNS = ("output_tokens", "output_length", "completion_tokens", "GeneratedTokens")


@dataclass(frozen=True)
class Trace:
    """An arrival-ordered request trace. Times are seconds from the first arrival."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "trace"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("trace arrays must have equal length")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate_rps(self) -> float:
        return len(self) / self.duration_s if self.duration_s > 0 else float(len(self))

    def scaled(self, rate_scale: float) -> Trace:
        """Replay the same arrival pattern at ``rate_scale`` times the rate (times divided by it)."""
        if not 0 < rate_scale < float("inf"):  # also refuses nan
            raise ConfigError(f"rate scale must be a positive finite number, got {rate_scale}")
        return Trace(self.arrival_s / rate_scale, self.input_tokens, self.output_tokens,
                     f"{self.name}@x{rate_scale:g}", dict(self.meta))

    def window(self, start_s: float, end_s: float) -> Trace:
        """The requests arriving in [start_s, end_s), times kept relative to the original start."""
        mask = (self.arrival_s >= start_s) & (self.arrival_s < end_s)
        return Trace(self.arrival_s[mask], self.input_tokens[mask], self.output_tokens[mask],
                     f"{self.name}[{start_s:g}:{end_s:g}]", dict(self.meta))

    def head(self, n: int) -> Trace:
        return Trace(self.arrival_s[:n], self.input_tokens[:n], self.output_tokens[:n], self.name,
                     dict(self.meta))

    def clipped_to_context(self, max_context_tokens: int) -> tuple[Trace, int]:
        """Shorten requests longer than a model's context window; returns the trace and how many were.

        The output is kept up to half the window and the prompt cut to what remains, as a client trims a
        conversation's history to fit.
        """
        ins = np.asarray(self.input_tokens, dtype=np.int64)
        outs = np.asarray(self.output_tokens, dtype=np.int64)
        over = ins + outs > max_context_tokens
        if not over.any():
            return self, 0
        new_out = np.where(over, np.minimum(outs, max_context_tokens // 2), outs)
        new_in = np.where(over, np.minimum(ins, max_context_tokens - new_out), ins)
        clipped = Trace(self.arrival_s, np.maximum(new_in, 1), new_out, self.name, dict(self.meta))
        return clipped, int(over.sum())

    @staticmethod
    def merge(traces: list[Trace], name: str | None = None) -> Trace:
        """Superpose traces on one clock (each starting at 0), as if their services shared a fleet."""
        arrival = np.concatenate([t.arrival_s for t in traces])
        order = np.argsort(arrival, kind="stable")
        return Trace(
            arrival[order],
            np.concatenate([t.input_tokens for t in traces])[order],
            np.concatenate([t.output_tokens for t in traces])[order],
            name or "+".join(t.name for t in traces),
        )


def _from_columns(times: list[float] | np.ndarray, inputs: list[int] | np.ndarray,
                  outputs: list[int] | np.ndarray, name: str) -> Trace:
    arrival = np.asarray(times, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    arrival -= arrival[0] if len(arrival) else 0.0
    return Trace(arrival, np.asarray(inputs, dtype=np.int64)[order],
                 np.asarray(outputs, dtype=np.int64)[order], name)


def _parse_number(raw: str | None, path: str, line: int, field_name: str) -> float:
    if raw is None or str(raw).strip() == "":
        raise InputFormatError(path, line, field_name, "missing value")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InputFormatError(path, line, field_name, f"not a number: {raw!r}") from None
    if not np.isfinite(value):
        raise InputFormatError(path, line, field_name, f"must be finite, got {raw!r}")
    return value


def _parse_count(raw: str | None, path: str, line: int, field_name: str, minimum: int) -> int:
    value = _parse_number(raw, path, line, field_name)
    if value != int(value) or value < minimum:
        raise InputFormatError(path, line, field_name,
                               f"must be an integer >= {minimum}, got {raw!r}")
    _check_token_count(value, path, line, field_name)
    return int(value)


def _check_token_count(value: float, path: str, line: int, field_name: str) -> None:
    if value > MAX_TOKENS_PER_REQUEST:
        raise InputFormatError(path, line, field_name, f"{value:g} tokens is beyond the limit of "
                               f"{MAX_TOKENS_PER_REQUEST:,} per request (a corrupt field?)")


def _parse_float(raw: str | None, path: str, line: int, field_name: str) -> float:
    value = _parse_number(raw, path, line, field_name)
    if value < 0:
        raise InputFormatError(path, line, field_name, f"must be >= 0, got {raw!r}")
    return value


def _parse_azure_timestamp(raw: str | None, path: str, line: int) -> float:
    # Azure writes 7 fractional digits, which datetime cannot parse: split the fraction off.
    text = (raw or "").strip()
    base, _, frac = text.partition(".")
    try:
        seconds = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").timestamp()
        return seconds + (float("0." + frac) if frac else 0.0)
    except ValueError:
        raise InputFormatError(path, line, "TIMESTAMP",
                               f"expected 'YYYY-MM-DD HH:MM:SS.fffffff', got {raw!r}") from None


def _load_csv(path: Path) -> Trace:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if not header:
            raise InputFormatError(str(path), 1, None, "empty file or missing CSV header")
        is_azure = "TIMESTAMP" in header
        time_col = "TIMESTAMP" if is_azure else next(
            (c for c in TIME_COLUMNS_S + TIME_COLUMNS_MS if c in header), None)
        in_col = next((c for c in INPUT_COLUMNS if c in header), None)
        out_col = next((c for c in OUTPUT_COLUMNS if c in header), None)
        for needed, options in ((time_col, TIME_COLUMNS_S + TIME_COLUMNS_MS),
                                (in_col, INPUT_COLUMNS), (out_col, OUTPUT_COLUMNS)):
            if needed is None:
                raise InputFormatError(str(path), 1, None,
                                       f"header {header} has none of the columns {list(options)}")
        time_scale = 1e-3 if time_col in TIME_COLUMNS_MS else 1.0
        assert time_col and in_col and out_col  # checked just above (for mypy)
        fast = _load_csv_vectorised(path, time_col, in_col, out_col, is_azure, time_scale)
        if fast is not None:
            return fast
        times, inputs, outputs = [], [], []
        for row in reader:
            line = reader.line_num
            if is_azure:
                times.append(_parse_azure_timestamp(row.get(time_col), str(path), line))
            else:
                times.append(_parse_float(row.get(time_col), str(path), line, time_col) * time_scale)
            inputs.append(_parse_count(row.get(in_col), str(path), line, in_col, 1))
            outputs.append(_parse_count(row.get(out_col), str(path), line, out_col, 1))
    if not times:
        raise InputFormatError(str(path), None, None, "trace has no requests")
    return _from_columns(times, inputs, outputs, path.stem)


def _load_csv_vectorised(path: Path, time_col: str, in_col: str, out_col: str, is_azure: bool,
                         time_scale: float) -> Trace | None:
    """The trace by whole-column parsing (16x less CPU than the row loop), or None where the file is not
    in the plain layout or holds a bad value: the row-by-row loop then parses it or names the error."""
    kinds = {time_col: fast_csv.AZURE_TIME if is_azure else fast_csv.DECIMAL,
             in_col: fast_csv.COUNT, out_col: fast_csv.COUNT}
    if len(kinds) < 3:
        return None
    cols = fast_csv.parse_columns(path, kinds)
    if cols is None or any(cols[c].min() < 1 or cols[c].max() > MAX_TOKENS_PER_REQUEST
                           for c in (in_col, out_col)):
        return None  # the row loop names the line and field
    times = cols[time_col] if is_azure else cols[time_col] * time_scale
    return _from_columns(times, cols[in_col], cols[out_col], path.stem)


def _load_jsonl(path: Path) -> Trace:
    times, inputs, outputs = [], [], []
    with path.open() as fh:
        for line_no, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputFormatError(str(path), line_no, None, f"invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise InputFormatError(str(path), line_no, None, "each line must be a JSON object")
            times.append(_parse_float(record.get("timestamp"), str(path), line_no, "timestamp") * 1e-3)
            inputs.append(_parse_count(record.get("input_length"), str(path), line_no, "input_length", 1))
            outputs.append(
                _parse_count(record.get("output_length"), str(path), line_no, "output_length", 1))
    if not times:
        raise InputFormatError(str(path), None, None, "trace has no requests")
    return _from_columns(times, inputs, outputs, path.stem)


def _builtin_path(filename: str) -> Path:
    return Path(str(resources.files("oserve.data").joinpath("traces", filename)))


def load_trace(spec: str | Path) -> Trace:
    """Load a trace from a file path or a built-in name (azure-conv, azure-code, azure-mix).

    Files ending in .jsonl are Mooncake-style JSON lines (``timestamp`` in ms, ``input_length``,
    ``output_length``); anything else is CSV, either the Azure format or a generic CSV with named columns.
    """
    text = str(spec)
    if text in BUILTIN_TRACES:
        parts = [_load_csv(_builtin_path(f)) for f in BUILTIN_TRACES[text]]
        trace = parts[0] if len(parts) == 1 else Trace.merge(parts)
        return Trace(trace.arrival_s, trace.input_tokens, trace.output_tokens, text)
    path = Path(text)
    if not path.exists():
        raise ConfigError(f"trace '{text}' is neither a file nor one of {sorted(BUILTIN_TRACES)}")
    if path.is_dir():
        raise ConfigError(f"trace '{text}' is a directory, not a trace file")
    try:
        trace = _load_jsonl(path) if path.suffix == ".jsonl" else _load_csv(path)
    except UnicodeDecodeError as exc:
        raise _not_text(path, exc) from None
    except csv.Error as exc:  # e.g. a NUL byte: a binary file
        raise InputFormatError(str(path), None, None, f"not a CSV trace ({exc})") from None
    _check_arrival_span(trace, str(path))
    return trace


def _not_text(path: Path, exc: UnicodeDecodeError) -> InputFormatError:
    """A binary (or non-UTF-8) file: the line of the first undecodable byte."""
    with path.open("rb") as fh:
        line = fh.read(exc.start).count(b"\n") + 1 if exc.start < 1 << 26 else None
    return InputFormatError(str(path), line, None, "not a text trace: the file is binary or not UTF-8")


def _check_arrival_span(trace: Trace, path: str) -> None:
    """Arrival times that are all equal carry no rate: planning on them would mean a rate of requests per
    zero seconds (billions per second), so refuse the trace instead."""
    if len(trace) > 1 and trace.duration_s <= 0:
        raise InputFormatError(path, None, "arrival time", f"all {len(trace)} requests arrive at the same "
                               "instant, so the trace has no arrival rate; give real timestamps")
