"""Calibration: efficiency factors that turn roofline FLOPs/bytes into measured operator times.

Each operator kind k has four parameters: a fixed launch cost ``t0_ms``, the fractions of the GPU's
datasheet compute (``compute_eff``) and memory bandwidth (``mem_eff``) it achieves, and ``parallel_half``,
the number of independent units (attention heads x sequences on the shard) at which the kernel fills half
the GPU: attention with few heads per shard (high TP) or few sequences cannot occupy all SMs. Its time is
``t0 + smoothmax(flops / (peak_flops * eff_c * occ), bytes / (peak_bw * eff_m * occ))`` with
``occ = units / (units + parallel_half)`` and a p-norm smooth max (sharp near the ridge point, as measured
kernels are). GEMMs are not occupancy-limited at these shapes (their ``parallel_half`` is 0). A decoder
layer adds norms, activations and residuals: ``layer = (sum of operators) * (1 + layer_extra_frac) +
layer_fixed_ms``.

The factors are fitted by least squares on log time (relative error) to a profile in the shared CSV format
and shipped in ``data/calibration.yaml``; ``oserve costmodel fit`` refits them.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from oserve.common.errors import ConfigError, InputFormatError
from oserve.common.yaml_io import safe_load
from oserve.costmodel.catalog import GpuSpec, ModelSpec, StepModel, _Catalog
from oserve.costmodel.operators import (
    GEMM_LAYERS,
    Work,
    decode_attention_work,
    gemm_work,
    prefill_attention_work,
)
from oserve.costmodel.precision import PRECISION_KINDS, base_kind, kind_peak, precision_row_work

OPERATOR_KINDS = ("gemm", "prefill", "decode")
LAYER_KINDS = ("layer_prefill", "layer_decode")
# whole engine steps timed through a server (bench/vllm_cpu_profile.py): a = prefill tokens of one
# sequence, or the decode batch; b = sequences, or the mean context; fitted into a device's StepModel
STEP_KINDS = ("step_prefill", "step_decode")
SMOOTH_P = 4.0


@dataclass(frozen=True)
class KindFactors:
    t0_ms: float
    compute_eff: float
    mem_eff: float
    parallel_half: float = 0.0  # units of parallel work at which the kernel reaches half efficiency

    def time_ms(self, work: Work, gpu: GpuSpec, peak: str = "bf16") -> float:
        return self.timer_ms(gpu, peak)(work.flops, work.bytes, work.parallelism)

    def timer_ms(self, gpu: GpuSpec, peak: str = "bf16") -> Callable[[float, float, float], float]:
        """``time_ms`` on one GPU and peak as a function of (FLOPs, bytes, parallelism), the GPU's
        rates folded in once (the same float operations: the cost model times thousands of kernels)."""
        compute = gpu.peak_tflops(peak) * 1e12 * self.compute_eff
        memory = gpu.hbm_gbps * 1e9 * self.mem_eff
        t0, half = self.t0_ms, self.parallel_half

        def kernel_ms(flops: float, nbytes: float, parallelism: float) -> float:
            occupancy = parallelism / (parallelism + half)
            tc = flops / (compute * occupancy) * 1e3
            tm = nbytes / (memory * occupancy) * 1e3
            return float(t0 + (tc ** SMOOTH_P + tm ** SMOOTH_P) ** (1.0 / SMOOTH_P))

        return kernel_ms


@dataclass(frozen=True)
class Calibration:
    kinds: dict[str, KindFactors]
    layer_extra_frac: float = 0.1
    layer_fixed_ms: float = 0.0
    fitted_on: tuple[str, ...] = ()
    source: str = ""

    def factors(self, kind: str) -> tuple[KindFactors, bool]:
        """The factors of ``kind`` and whether they were measured; an unmeasured precision kind borrows
        its bf16 kind's factors (applied at its own peak), which the cost model reports as uncalibrated."""
        if kind in self.kinds:
            return self.kinds[kind], True
        return self.kinds[base_kind(kind)], False

    def kind_time_ms(self, kind: str, work: Work, gpu: GpuSpec) -> float:
        return self.factors(kind)[0].time_ms(work, gpu, kind_peak(kind))

    def kind_timer_ms(self, kind: str, gpu: GpuSpec) -> Callable[[float, float, float], float]:
        """``kind_time_ms`` on one GPU as a function of (FLOPs, bytes, parallelism)."""
        return self.factors(kind)[0].timer_ms(gpu, kind_peak(kind))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fitted_on": list(self.fitted_on),
            "source": self.source,
            "layer_extra_frac": self.layer_extra_frac,
            "layer_fixed_ms": self.layer_fixed_ms,
            "kinds": {k: {"t0_ms": v.t0_ms, "compute_eff": v.compute_eff, "mem_eff": v.mem_eff,
                          "parallel_half": v.parallel_half} for k, v in self.kinds.items()},
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Calibration:
        try:
            kinds = {k: KindFactors(float(v["t0_ms"]), float(v["compute_eff"]), float(v["mem_eff"]),
                                    float(v.get("parallel_half", 0.0)))
                     for k, v in d["kinds"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration is missing or has a bad field: {exc}") from None
        missing = set(OPERATOR_KINDS) - set(kinds)
        if missing:
            raise ConfigError(f"calibration lacks operator kinds {sorted(missing)}")
        return Calibration(kinds, float(d.get("layer_extra_frac", 0.1)),
                           float(d.get("layer_fixed_ms", 0.0)), tuple(d.get("fitted_on", ())),
                           str(d.get("source", "")))


def load_calibration(path: str | Path | None = None) -> Calibration:
    if path is None:
        text = resources.files("oserve.data").joinpath("calibration.yaml").read_text()
    else:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"calibration file '{path}' does not exist") from None
    return Calibration.from_dict(safe_load(text))


# ---- profiles ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProfileRow:
    line: int
    gpu: str
    kind: str
    model: str
    tp: int
    a: float
    b: str
    ms: float


def read_profile(path: str | Path) -> list[ProfileRow]:
    """Rows of a profile CSV (columns gpu, kind, model, tp, a, b, ms); ceiling rows are skipped."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"profile '{path}' does not exist")
    rows = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"gpu", "kind", "model", "tp", "a", "b", "ms"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise InputFormatError(str(path), 1, None,
                                   f"header must contain {sorted(needed)}, got {reader.fieldnames}")
        for rec in reader:
            line = reader.line_num
            kind = rec["kind"]
            if kind.startswith("ceiling"):
                continue
            known = OPERATOR_KINDS + LAYER_KINDS + PRECISION_KINDS + STEP_KINDS
            if kind not in known:
                raise InputFormatError(str(path), line, "kind", f"unknown kind {kind!r}, expected {known}")
            try:
                tp, a, ms = int(rec["tp"]), float(rec["a"]), float(rec["ms"])
            except (TypeError, ValueError):
                raise InputFormatError(str(path), line, "tp/a/ms", "not a number") from None
            if tp < 1 or a <= 0 or not ms > 0:
                raise InputFormatError(str(path), line, "tp/a/ms", "must be positive")
            if kind.startswith("gemm") and rec["b"] not in GEMM_LAYERS:
                raise InputFormatError(str(path), line, "b", f"GEMM layer must be one of {GEMM_LAYERS}")
            rows.append(ProfileRow(line, rec["gpu"], kind, rec["model"], tp, a, rec["b"], ms))
    return rows


def profile_gpu(device_name: str, gpus: _Catalog[GpuSpec]) -> GpuSpec:
    """The catalog GPU of a profile's ``gpu`` column: a catalog name or alias, or the device name the
    driver reports (``NVIDIA H100 80GB HBM3``, ``NVIDIA A100-SXM4-80GB``), matched when every part of one
    catalog name (``H100``, ``80GB``) is a word of it. ``gpus`` is a catalog from ``load_gpus``."""
    try:
        return gpus.get(device_name)
    except ConfigError:
        pass
    words = set(re.split(r"[\s\-_]+", device_name.upper()))
    matches = [gpus.get(n) for n in gpus.names()
               if set(re.split(r"[\s\-_]+", n.upper())) <= words]
    best = max((len(re.split(r"[\s\-_]+", g.name)) for g in matches), default=0)
    matches = [g for g in matches if len(re.split(r"[\s\-_]+", g.name)) == best]
    if len(matches) != 1:
        raise ConfigError(f"profile GPU '{device_name}' matches {'no' if not matches else 'several'} catalog "
                          f"GPUs ({', '.join(g.name for g in matches) or ', '.join(gpus.names())}); "
                          "name one with --gpu")
    return matches[0]


def operator_work(row: ProfileRow, model: ModelSpec) -> list[tuple[str, Work]]:
    """The (kind, work) parts of a profile row; a layer row is the sum of its operators."""
    if row.kind == "gemm":
        return [("gemm", gemm_work(model, row.tp, row.b, row.a))]
    if row.kind in PRECISION_KINDS:
        return [(row.kind, precision_row_work(row.kind, model, row.tp, row.a, row.b))]
    if row.kind == "prefill":
        return [("prefill", prefill_attention_work(model, row.tp, row.a, float(row.b)))]
    if row.kind == "decode":
        return [("decode", decode_attention_work(model, row.tp, row.a, float(row.b)))]
    if row.kind == "layer_prefill":
        tokens = row.a
        return ([("gemm", gemm_work(model, row.tp, g, tokens)) for g in GEMM_LAYERS]
                + [("prefill", prefill_attention_work(model, row.tp, row.a, 1))])
    batch, context = row.a, float(row.b)
    return ([("gemm", gemm_work(model, row.tp, g, batch)) for g in GEMM_LAYERS]
            + [("decode", decode_attention_work(model, row.tp, batch, context))])


def predict_row_ms(row: ProfileRow, model: ModelSpec, gpu: GpuSpec, cal: Calibration) -> float:
    parts = sum(cal.kind_time_ms(k, w, gpu) for k, w in operator_work(row, model))
    if row.kind in LAYER_KINDS:
        return parts * (1 + cal.layer_extra_frac) + cal.layer_fixed_ms
    return parts


# ---- fitting ----------------------------------------------------------------------------------------

def fit_calibration(rows: list[ProfileRow], models: dict[str, ModelSpec], gpu: GpuSpec,
                    train_models: list[str]) -> Calibration:
    """Fit per-kind factors on the operator rows, then the layer terms on the layer rows."""
    from scipy.optimize import least_squares

    train = [r for r in rows if r.model in train_models]
    if not train:
        raise ConfigError(f"no profile rows for the training models {train_models}")
    kinds: dict[str, KindFactors] = {}
    present = {r.kind for r in train}
    for kind in OPERATOR_KINDS + tuple(k for k in PRECISION_KINDS if k in present):
        krows = [r for r in train if r.kind == kind]
        if not krows:
            raise ConfigError(f"profile has no '{kind}' rows for {train_models}")
        works = [operator_work(r, models[r.model])[0][1] for r in krows]
        measured = np.log([r.ms for r in krows])

        occupancy_limited = not kind.startswith("gemm")
        peak = kind_peak(kind)

        def residuals(x: np.ndarray, works: list[Work] = works, measured: np.ndarray = measured,
                      occ: bool = occupancy_limited, peak: str = peak) -> np.ndarray:
            f = KindFactors(math.exp(x[0]), math.exp(x[1]), math.exp(x[2]),
                            math.exp(x[3]) if occ else 0.0)
            return np.asarray(np.log([f.time_ms(w, gpu, peak) for w in works]) - measured)

        sol = least_squares(residuals, x0=[math.log(0.005), math.log(0.6), math.log(0.8), 0.0],
                            loss="soft_l1", f_scale=0.1)
        x = [float(math.exp(v)) for v in sol.x]
        kinds[kind] = KindFactors(x[0], x[1], x[2], x[3] if occupancy_limited else 0.0)
    lrows = [r for r in train if r.kind in LAYER_KINDS]
    extra, fixed = 0.1, 0.0
    if lrows:
        base = np.array([sum(kinds[k].time_ms(w, gpu) for k, w in operator_work(r, models[r.model]))
                         for r in lrows])
        measured = np.log([r.ms for r in lrows])

        def layer_res(x: np.ndarray) -> np.ndarray:
            return np.asarray(np.log(base * (1 + x[0]) + abs(x[1])) - measured)

        sol = least_squares(layer_res, x0=[0.1, 0.01], loss="soft_l1", f_scale=0.1)
        extra, fixed = float(sol.x[0]), float(abs(sol.x[1]))
    return Calibration(kinds, extra, fixed, tuple(train_models), gpu.name)


def fit_step_model(rows: list[ProfileRow]) -> StepModel:
    """Fit a device's step time ``o + p * a + q * a^2`` (step_prefill rows: one prompt of a tokens,
    whose attention is quadratic in it) and ``o + d * batch`` (step_decode rows) by non-negative least
    squares on relative error (each row weighted by 1/ms, so a 50 ms decode step counts as much as a 2 s
    prefill). Both kinds are needed: the overhead is shared. q is 0 when the prefill rows are linear,
    and only prefill rows of several lengths can tell it from p."""
    from scipy.optimize import nnls

    srows = [r for r in rows if r.kind in STEP_KINDS]
    for kind in STEP_KINDS:
        if not any(r.kind == kind for r in srows):
            raise ConfigError(f"profile has no '{kind}' rows: a step model needs both {STEP_KINDS}")
    design = np.array([_step_terms(r) for r in srows])
    seconds = np.array([r.ms * 1e-3 for r in srows])
    weight = 1.0 / seconds
    x, _ = nnls(design * weight[:, None], seconds * weight)
    return StepModel(step_overhead_s=float(x[0]), prefill_s_per_token=float(x[1]),
                     decode_s_per_seq=float(x[2]), prefill_attention_s_per_token2=float(x[3]))


def _step_terms(row: ProfileRow) -> list[float]:
    """A step_* row's terms in the order of the step model's coefficients (overhead, prefill tokens,
    decode batch, prefill attention)."""
    if row.kind == "step_prefill":
        return [1.0, row.a, 0.0, row.a * row.a]
    return [1.0, 0.0, row.a, 0.0]


def predict_step_ms(row: ProfileRow, model: StepModel) -> float:
    """The step model's time of one step_* profile row."""
    coef = (model.step_overhead_s, model.prefill_s_per_token, model.decode_s_per_seq,
            model.prefill_attention_s_per_token2)
    return 1e3 * float(np.dot(coef, _step_terms(row)))
