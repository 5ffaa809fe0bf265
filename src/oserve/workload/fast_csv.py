"""Vectorised parsing of trace CSVs in their plain layout (numpy on the file's bytes, no per-row Python).

Handles what real traces are: a header line, then lines (ending in ``\n`` or ``\r\n``) of
comma-separated fields without quotes, each with exactly as many fields as the header; Azure timestamps
written ``YYYY-MM-DD HH:MM:SS[.fffffff]``; counts written as plain digits; times as plain decimals.
Anything else (quotes, blank lines, a stray ``\r``,
whitespace, a malformed value anywhere) makes :func:`parse_columns` return None, and the caller's
row-by-row loader, which names the file, line and field of a bad value, parses the file instead. So the
fast path never changes what a trace means: where it answers, the values are those of the row-by-row
loader (the Azure arithmetic is the same float operations; decimals go through a correctly rounded
parse, as ``float()`` does), and where it cannot it declines.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

AZURE_TIME, COUNT, DECIMAL = "azure_time", "count", "decimal"
_NEWLINE, _COMMA, _ZERO = 10, 44, 48
_MAX_DIGITS = 15  # integers below 10^15 are exact in float64, so fractions divide exactly rounded
_DATE_LAYOUT = "dddd-dd-dd dd:dd:dd"
_DATE_DIGITS = [j for j, c in enumerate(_DATE_LAYOUT) if c == "d"]
_DATE_SEPS = [j for j, c in enumerate(_DATE_LAYOUT) if c != "d"]
_DATE_SEP_CHARS = np.array([ord(_DATE_LAYOUT[j]) for j in _DATE_SEPS], np.uint8)
_POW10 = np.array([float(10 ** k) for k in range(_MAX_DIGITS + 1)])  # exact, unlike a float pow
_POW10_INT = np.array([10 ** k for k in range(_MAX_DIGITS + 1)], np.int64)
_PAD = 64  # zero bytes after the data, so that fixed-width windows never run off the end


def parse_columns(path: Path, kinds: dict[str, str]) -> dict[str, np.ndarray] | None:
    """Columns ``kinds`` (name -> AZURE_TIME | COUNT | DECIMAL) of a plain CSV, or None if not plain.

    AZURE_TIME gives seconds since the epoch (the timestamp read as UTC) as float64; COUNT int64;
    DECIMAL float64 (finite values only).
    """
    data = _read_padded(path)
    if data is None:
        return None
    size = len(data) - _PAD
    newlines = np.flatnonzero(data[:size] == _NEWLINE)
    head = bytes(data[:newlines[0]]).removesuffix(b"\r")
    if b'"' in head or b"\r" in head:
        return None
    header = next(csv.reader([head.decode("utf-8", errors="replace")]), [])
    if len(set(header)) != len(header) or any(name not in header for name in kinds):
        return None
    body_start = int(newlines[0]) + 1
    ends = newlines[1:]
    if not len(ends):
        return None
    # lines end in \n or \r\n (the Azure files); a \r anywhere else, or a quote, is for the csv module
    crlf = data[ends - 1] == 13
    body = data[body_start:size]
    if np.count_nonzero(body == 13) != np.count_nonzero(crlf) or np.count_nonzero(body == ord('"')) \
            or np.count_nonzero((body - np.uint8(1)) >= 127):  # NUL wraps to 255: NUL or non-ASCII
        return None  # NUL and non-ASCII bytes too: the text reader decides what a binary file is
    starts = np.concatenate([[body_start], ends[:-1] + 1])
    fields = _fields(data, starts, ends - crlf, len(header))
    if fields is None:
        return None
    out = {}
    for name, kind in kinds.items():
        begin, end = fields[header.index(name)]
        parser = {AZURE_TIME: _azure_times, COUNT: _counts, DECIMAL: _decimals}[kind]
        values = parser(data, begin, end)
        if values is None:
            return None
        out[name] = values
    return out


def _read_padded(path: Path) -> np.ndarray | None:
    """The file's bytes, a newline added if the last line lacks one, then _PAD zero bytes (read straight
    into the padded buffer: one pass over the file, no copy)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = np.zeros(size + 1 + _PAD, np.uint8)
        size = fh.readinto(data.data[:size])  # numpy's own buffer view of the array
    if not size:
        return None
    if data[size - 1] != _NEWLINE:  # a last line without its newline
        data[size] = _NEWLINE
        size += 1
    return data[:size + _PAD]


def _fields(data: np.ndarray, starts: np.ndarray, ends: np.ndarray,
            num_fields: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per field, its [begin, end) offsets on every line, or None unless every line has exactly
    ``num_fields - 1`` commas (``ends`` excludes the line terminator)."""
    commas = np.flatnonzero(data[starts[0]:ends[-1]] == _COMMA) + starts[0]
    num_lines = len(starts)
    if len(commas) != num_lines * (num_fields - 1):
        return None
    commas = commas.reshape(num_lines, num_fields - 1)
    if num_fields > 1 and (np.any(commas[:, 0] < starts) or np.any(commas[:, -1] >= ends)):
        return None  # counts agree overall but some line has more commas and another fewer
    begins = [starts] + [commas[:, k] + 1 for k in range(num_fields - 1)]
    finishes = [commas[:, k] for k in range(num_fields - 1)] + [ends]
    return list(zip(begins, finishes))


def _window(data: np.ndarray, begin: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` bytes from each offset in ``begin`` as a (lines, width) matrix (``width`` <= _PAD)."""
    rows: np.ndarray = as_strided(data, shape=(len(data) - _PAD, width), strides=(1, 1), writeable=False)
    return np.asarray(rows[begin])


def _digits(data: np.ndarray, begin: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Fields of 1 to _MAX_DIGITS decimal digits as (value int64, number of digits), else None."""
    width = end - begin
    if not len(width) or width.min() < 1 or width.max() > _MAX_DIGITS:
        return None
    span = int(width.max())
    digits = _window(data, begin, span) - np.uint8(_ZERO)  # non-digits wrap to > 9
    inside = np.arange(span)[None, :] < width[:, None]
    if np.any(inside & (digits > 9)):
        return None
    digits[~inside] = 0
    # read as if every field had ``span`` digits (zeros after it), then drop the extra powers of ten
    columns = np.ascontiguousarray(digits.T).astype(np.int64)
    value = columns[0]
    for column in columns[1:]:
        value = value * 10 + column
    return value // _POW10_INT[span - width], width


def _counts(data: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    parsed = _digits(data, begin, end)
    return None if parsed is None else parsed[0]


def _decimals(data: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    """Plain decimals (digits, one optional point) parsed exactly as ``float()`` parses them."""
    width = end - begin
    if not len(width) or width.min() < 1 or width.max() > 32:
        return None
    span = int(width.max())
    chars = _window(data, begin, span)
    inside = np.arange(span)[None, :] < width[:, None]
    chars = np.where(inside, chars, 0).astype(np.uint8)
    is_digit = (chars - np.uint8(_ZERO)) <= 9
    points = (chars == ord(".")).sum(axis=1)
    if np.any(inside & ~is_digit & (chars != ord("."))) or np.any(points > 1) \
            or np.any(is_digit.sum(axis=1) == 0):
        return None
    # numpy's bytes-to-float cast rounds correctly, like float(); trailing zero bytes are padding
    return np.ascontiguousarray(chars).view(f"S{span}").ravel().astype(np.float64)


def _azure_times(data: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    """``YYYY-MM-DD HH:MM:SS[.f+]`` as epoch seconds: the whole seconds plus ``int(f) / 10**len(f)``,
    the same two float64 operations as ``strptime(...).timestamp() + float('0.' + f)`` under UTC."""
    width = end - begin
    base = len(_DATE_LAYOUT)
    if not len(width) or width.min() < base:
        return None
    chars = _window(data, begin, base)
    digits = chars - np.uint8(_ZERO)
    if np.any(digits[:, _DATE_DIGITS] > 9) or np.any(chars[:, _DATE_SEPS] != _DATE_SEP_CHARS):
        return None
    d = np.ascontiguousarray(digits.T[_DATE_DIGITS]).astype(np.int32)  # (14, lines): one row per digit
    year = d[0] * 1000 + d[1] * 100 + d[2] * 10 + d[3]
    month, day, hour, minute, second = (d[k] * 10 + d[k + 1] for k in range(4, 14, 2))
    if np.any((month < 1) | (month > 12) | (day < 1) | (day > _days_in_month(year, month))
              | (year < 1) | (hour > 23) | (minute > 59) | (second > 59)):
        return None
    days = _days_from_civil(year, month, day).astype(np.int64)
    whole = ((days * 24 + hour) * 60 + minute) * 60 + second
    seconds = whole.astype(np.float64)
    has_fraction = width > base
    if not has_fraction.any():
        return np.asarray(seconds)
    if np.any(data[begin[has_fraction] + base] != ord(".")):
        return None
    frac_begin, frac_end = begin[has_fraction] + base + 1, end[has_fraction]
    parsed = _digits(data, frac_begin, frac_end)
    if parsed is None:
        return None
    value, num_digits = parsed
    fraction = np.zeros(len(begin))
    fraction[has_fraction] = value.astype(np.float64) / _POW10[num_digits]
    return np.asarray(seconds + fraction)


def _days_in_month(year: np.ndarray, month: np.ndarray) -> np.ndarray:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    days = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(month, 1, 12) - 1]
    return np.asarray(days + ((month == 2) & leap))


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's closed form)."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return np.asarray(era * 146097 + doe - 719468)
