"""SLO input: presets, flags, per-type and per-input-range YAML, and errors that name file, line, field."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.workload.slo import SLO_PRESETS, Slo, load_slo_file, slo_from_flags

NAMES = ["T0(in~100,out~50)", "T1(in~900,out~200)", "T2(in~6000,out~300)"]


def _write(tmp_path, text: str):
    path = tmp_path / "slo.yaml"
    path.write_text(text)
    return path


def test_presets_and_flags():
    loose = slo_from_flags("loose", None, None, None)
    assert loose.default == Slo(2.0, 0.1) and loose.attainment == 0.9
    assert SLO_PRESETS["tight"] == Slo(1.0, 0.05)
    mixed = slo_from_flags("tight", 3.0, None, 0.95)  # a flag overrides one bound of the preset
    assert mixed.default == Slo(3.0, 0.05) and mixed.attainment == 0.95
    only_ttft = slo_from_flags(None, 1.5, None, None)
    assert only_ttft.default.ttft_s == 1.5 and math.isinf(only_ttft.default.tpot_s)
    assert slo_from_flags(None, None, None, None) is None


@pytest.mark.parametrize("args, match", [
    (("fast", None, None, None), "--slo: expected loose or tight"),
    ((None, -1.0, None, None), "positive"),
    ((None, None, None, 0.9), "--attainment needs an SLO"),
    (("loose", None, None, 1.5), r"attainment target must be in \(0, 1\]"),
])
def test_bad_flags(args, match):
    with pytest.raises(ConfigError, match=match):
        slo_from_flags(*args)


def test_file_rules_take_precedence_type_then_range_then_default(tmp_path):
    path = _write(tmp_path, """\
attainment: 0.8
default: {ttft_s: 2.0, tpot_s: 0.1}
types:
  T0: {ttft_s: 0.5, tpot_s: 0.05}
input_ranges:
  - {min_input_tokens: 4096, ttft_s: 8.0}
""")
    spec = load_slo_file(path)
    assert spec.attainment == 0.8
    type_id = np.array([0, 1, 2, 2])
    inputs = np.array([100, 900, 5000, 3000])
    ttft, tpot = spec.bounds(type_id, NAMES, inputs)
    assert list(ttft) == [0.5, 2.0, 8.0, 2.0]
    assert tpot[0] == 0.05 and tpot[1] == 0.1 and math.isinf(tpot[2]) and tpot[3] == 0.1
    slos = spec.type_slos(type_id, NAMES, inputs)
    assert slos[2] == Slo(2.0, 0.1)  # the tightest of the type's requests


def test_full_type_name_and_uncovered_request(tmp_path):
    spec = load_slo_file(_write(tmp_path, f"types:\n  '{NAMES[1]}': {{ttft_s: 1}}\n"))
    ttft, _ = spec.bounds(np.array([1]), NAMES, np.array([900]))
    assert ttft[0] == 1.0
    with pytest.raises(ConfigError, match="no rule covers a request of type T0.*add a 'default'"):
        spec.bounds(np.array([0, 1]), NAMES, np.array([100, 900]))


@pytest.mark.parametrize("text, match", [
    ("default: {ttft_s: 2.0, tpot_s: 0.1}\nattainment: 2\n", r"slo.yaml:2: field 'attainment'"),
    ("default:\n  ttft_s: 2.0\n  tpot: 0.1\n", r"slo.yaml:3: unknown field 'default.tpot'"),
    ("default: {ttft_s: 2.0}\ntypes:\n  T0: {ttft_s: -1}\n",
     r"slo.yaml:3: field 'types.T0.ttft_s' must be positive"),
    ("input_ranges:\n  - {min_input_tokens: 10, ttft_s: 1}\n"
     "  - {min_input_tokens: 100, max_input_tokens: 50, ttft_s: 1}\n",
     r"slo.yaml:3: field 'input_ranges\[1\].max_input_tokens' must exceed"),
    ("default: {ttft_s: fast}\n", r"slo.yaml:1: field 'default.ttft_s' must be a number"),
    ("default: [1, 2\n", r"slo.yaml:\d+: not valid YAML"),
    ("slo: 1\n", r"slo.yaml:1: unknown field 'slo'"),
    ("default: {}\n", r"slo.yaml:1: field 'default' needs ttft_s or tpot_s"),
])
def test_file_errors_name_file_line_and_field(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_slo_file(_write(tmp_path, text))


def test_unknown_type_names_its_line(tmp_path):
    spec = load_slo_file(_write(tmp_path, "default: {ttft_s: 2}\ntypes:\n  T7: {ttft_s: 1}\n"))
    with pytest.raises(ConfigError, match=r"slo.yaml:3: field 'types.T7': no request type"):
        spec.bounds(np.array([0]), NAMES, np.array([100]))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read SLO file"):
        slo_from_flags(str(tmp_path / "nope.yaml"), None, None, None)
