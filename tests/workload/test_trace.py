import json

import numpy as np
import pytest

from oserve.common.errors import ConfigError, InputFormatError
from oserve.workload import load_trace
from oserve.workload.trace import Trace


def test_builtin_azure_traces_load_sorted_and_complete():
    conv = load_trace("azure-conv")
    code = load_trace("azure-code")
    assert len(conv) == 19366 and len(code) == 8819
    assert np.all(np.diff(conv.arrival_s) >= 0) and conv.arrival_s[0] == 0
    assert 3400 < conv.duration_s < 3601
    assert conv.input_tokens.min() >= 1 and conv.output_tokens.min() >= 1
    mix = load_trace("azure-mix")
    assert len(mix) == len(conv) + len(code)
    both = conv.input_tokens.tolist() + code.input_tokens.tolist()
    assert sorted(mix.input_tokens.tolist()) == sorted(both)


def test_azure_timestamp_fraction_parsed(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5000000,10,5\n"
                 "2023-11-16 18:15:47.7500000,20,6\n")
    t = load_trace(f)
    assert t.arrival_s.tolist() == pytest.approx([0.0, 1.25])


def test_jsonl_mooncake_format(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": 0, "input_length": 100, "output_length": 10},
        {"timestamp": 2500, "input_length": 200, "output_length": 20, "hash_ids": [1]}]) + "\n")
    t = load_trace(f)
    assert t.arrival_s.tolist() == [0.0, 2.5] and t.output_tokens.tolist() == [10, 20]


def test_generic_csv_with_named_columns(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("arrival_s,prompt_tokens,completion_tokens\n1.5,10,3\n0.5,7,2\n")
    t = load_trace(f)
    assert t.input_tokens.tolist() == [7, 10] and t.arrival_s.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("content, line, field", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\nnot-a-date,1,1\n", 3, "TIMESTAMP"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,ten,5\n", 2, "ContextTokens"),
    ("arrival_s,input_tokens,output_tokens\n0,5,-1\n", 2, "output_tokens"),
    ("arrival_s,input_tokens,output_tokens\n0,5\n", 2, "output_tokens"),
])
def test_malformed_csv_names_file_line_and_field(tmp_path, content, line, field):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(InputFormatError) as err:
        load_trace(f)
    assert err.value.line == line and err.value.field == field
    assert str(f) in str(err.value) and f"line {line}" in str(err.value)


def test_malformed_jsonl_names_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1}\n{oops\n')
    with pytest.raises(InputFormatError, match="line 2"):
        load_trace(f)


def test_missing_columns_and_unknown_trace(tmp_path):
    f = tmp_path / "h.csv"
    f.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputFormatError, match="none of the columns"):
        load_trace(f)
    with pytest.raises(ConfigError, match="neither a file"):
        load_trace("no-such-trace")


def test_rate_scaling_compresses_time(conv_trace):
    fast = conv_trace.scaled(2.0)
    assert fast.duration_s == pytest.approx(conv_trace.duration_s / 2)
    assert fast.mean_rate_rps == pytest.approx(conv_trace.mean_rate_rps * 2, rel=1e-6)
    with pytest.raises(ConfigError):
        conv_trace.scaled(0)


def test_merge_keeps_every_request():
    a = Trace(np.array([0.0, 2.0]), np.array([1, 2]), np.array([1, 1]), "a")
    b = Trace(np.array([1.0]), np.array([9]), np.array([1]), "b")
    m = Trace.merge([a, b])
    assert m.arrival_s.tolist() == [0.0, 1.0, 2.0] and m.input_tokens.tolist() == [1, 9, 2]


# --- the vectorised CSV path against the row-by-row loader it replaces (trace._load_csv's loop) ---

def _both_ways(path, monkeypatch):
    """The trace loaded by the vectorised path and by the row-by-row loop, plus whether the fast path
    answered (it declines with None for anything outside the plain layout)."""
    from oserve.workload import fast_csv
    from oserve.workload import trace as trace_mod

    fast_answered = []
    real = fast_csv.parse_columns

    def spy(*args):
        out = real(*args)
        fast_answered.append(out is not None)
        return out

    monkeypatch.setattr(fast_csv, "parse_columns", spy)
    fast = load_trace(path)
    monkeypatch.setattr(trace_mod, "_load_csv_vectorised", lambda *a: None)
    rows = load_trace(path)
    return fast, rows, all(fast_answered)


def _same(a, b):
    return all(np.array_equal(getattr(a, k), getattr(b, k)) and getattr(a, k).dtype == getattr(b, k).dtype
               for k in ("arrival_s", "input_tokens", "output_tokens"))


def test_vectorised_csv_equals_row_loader_on_the_bundled_azure_traces(monkeypatch):
    from oserve.workload.trace import _builtin_path

    for name in ("azure2023_conv.csv", "azure2023_code.csv"):
        fast, rows, answered = _both_ways(_builtin_path(name), monkeypatch)
        assert answered and _same(fast, rows) and len(fast) > 8000


@pytest.mark.parametrize("body, answered", [
    # CRLF with and without a final newline, LF, unsorted arrivals, a leap day, fractions of any length
    ("2024-02-29 23:59:59.9999999,5,6\r\n2024-03-01 00:00:00,7,8\r\n2024-02-29 12:00:00.5,1,1", True),
    ("2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.995169,396,109\n", True),
    ("2023-12-31 23:59:59.1,10,20\n2024-01-01 00:00:00.123456789012345,30,40\n", True),
    # layouts the fast path leaves to the csv module, which still parses them
    ('"2023-11-16 18:15:46.1",10,5\n2023-11-16 18:15:47.2,11,6\n', False),
    ("2023-11-16 18:15:46.1, 10,5\n2023-11-16 18:15:47.2,11,6\n", False),
    ("2023-1-6 8:15:46.1,10,5\n2023-11-16 18:15:47.2,11,6\n", False),
    ("2023-11-16 18:15:46.1,10.0,5\n2023-11-16 18:15:47.2,11,6,extra\n", False),
])
def test_vectorised_azure_csv_gives_the_row_loaders_trace(tmp_path, monkeypatch, body, answered):
    f = tmp_path / "t.csv"
    f.write_bytes(("TIMESTAMP,ContextTokens,GeneratedTokens\r\n" + body).encode())
    fast, rows, fast_answered = _both_ways(f, monkeypatch)
    assert fast_answered == answered and _same(fast, rows)


@pytest.mark.parametrize("header, body", [
    ("arrival_s,prompt_tokens,completion_tokens", "1.5,10,3\n0.5,7,2\n12345.678901234567,1,1\n3,4,5\n"),
    ("timestamp_ms,input_tokens,output_tokens", "1500,10,3\n500,7,2\n"),
    ("id,input_length,time_s,output_length", "a,10,0.1,3\nb,7,.25,2\nc,5,7.,1\n"),
])
def test_vectorised_generic_csv_gives_the_row_loaders_trace(tmp_path, monkeypatch, header, body):
    f = tmp_path / "g.csv"
    f.write_text(header + "\n" + body)
    fast, rows, answered = _both_ways(f, monkeypatch)
    assert answered and _same(fast, rows)


def test_vectorised_decimals_round_like_float(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    values = [f"{x:.{int(d)}f}" for x, d in zip(rng.random(2000) * 10.0 ** rng.integers(0, 9, 2000),
                                                rng.integers(0, 12, 2000))]
    f = tmp_path / "d.csv"
    f.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{v},1,1\n" for v in values))
    fast, rows, answered = _both_ways(f, monkeypatch)
    assert answered and _same(fast, rows)


@pytest.mark.parametrize("content, line, field", [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\n2023-02-30 18:15:46.1,1,1\n",
     3, "TIMESTAMP"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:47,0,1\n",
     3, "ContextTokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:47.x,1,1\n",
     3, "TIMESTAMP"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:47,1,20000000\n",
     3, "GeneratedTokens"),  # plain digits, but beyond MAX_TOKENS_PER_REQUEST
])
def test_values_the_fast_path_rejects_still_get_the_row_loaders_error(tmp_path, content, line, field):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(InputFormatError) as err:
        load_trace(f)
    assert err.value.line == line and err.value.field == field
