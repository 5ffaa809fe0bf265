"""Weight and KV-cache number formats as the cost model prices them, and where each factor comes from.

A replica's ``weight_format`` (bf16, fp8, int8, int4) sets the bytes each weight occupies (memory, and
what a memory-bound GEMM reads), the bytes of the activations fed to the GEMM, and which tensor-core peak
the GEMM runs at; its ``kv_cache_dtype`` (bf16, fp8, int8, int4) sets the bytes of each cached K/V value,
so how many tokens fit and what decode attention reads. Prefill attention and all-reduces stay in bf16.

Every factor carries its source:

- ``exact``: follows from the format's definition (fp8 is one byte; INT4 group-128 weights carry an fp16
  scale and zero per 128 values; per-head per-token INT8 KV carries an fp16 scale and zero per head).
- ``datasheet``: the vendor's dense tensor-core peak (``gpus.yaml``: ``fp8_tflops``, ``int8_tops``).
- ``assumed``: not measured by us: the efficiency of a low-precision kernel is taken equal to the bf16
  kernel's fitted efficiency (at the low-precision peak), and W4A16's in-loop dequantisation costs a
  fixed share of compute. These are *uncalibrated* until a profile measures them (``measured``): the
  profile kinds ``gemm_fp8``, ``gemm_int8``, ``gemm_w4a16``, ``decode_kv_fp8``, ``decode_kv_int8``
  written by ``bench/gpu_precision_profile.py`` and fitted by ``oserve costmodel fit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import GpuSpec, ModelSpec
from oserve.costmodel.operators import Work, decode_attention_work, gemm_shape

WEIGHT_FORMATS = ("bf16", "fp8", "int8", "int4")
KV_FORMATS = ("bf16", "fp8", "int8", "int4")
INT4_GROUP = 128
SCALE_ZERO_BYTES = 4.0  # one fp16 scale and one fp16 zero
# W4A16 kernels dequantise in the main loop: compute-bound GEMMs run this much slower than bf16
# (assumed; Marlin and TurboMind report near bf16 speed at large batch, so a modest 15%).
W4A16_COMPUTE_OVERHEAD = 1.15


@dataclass(frozen=True)
class Factor:
    """A number the cost model uses and where it comes from."""

    value: float
    source: str  # exact | datasheet | assumed | measured
    note: str = ""


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bytes_per_weight: Factor
    activation_bytes: float  # bytes of each activation element the GEMM reads
    peak: str  # tensor-core peak the GEMM runs at: bf16 | fp8 | int8
    compute_overhead: Factor  # multiplier on the GEMM's compute time
    profile_kind: str  # the profile kind that measures this GEMM ("gemm" for bf16)


@dataclass(frozen=True)
class KvFormat:
    name: str
    bytes_per_value: float  # value bytes, before scale overhead
    scale_bytes_per_head_token: float  # extra bytes per (token, head) of K or V
    profile_kind: str

    def bytes_per_element(self, head_dim: int) -> Factor:
        """Bytes per cached K or V value, scale overhead included."""
        value = self.bytes_per_value + self.scale_bytes_per_head_token / head_dim
        note = "value bytes" + (" + fp16 scale/zero per token per head" if self.scale_bytes_per_head_token
                                else "")
        return Factor(value, "exact", note)


_EXACT_1 = Factor(1.0, "exact")
WEIGHT_SPECS = {
    "bf16": WeightFormat("bf16", Factor(2.0, "exact"), 2.0, "bf16", _EXACT_1, "gemm"),
    "fp8": WeightFormat("fp8", Factor(1.0, "exact", "e4m3 with per-channel scales (negligible)"), 1.0,
                        "fp8", _EXACT_1, "gemm_fp8"),
    "int8": WeightFormat("int8", Factor(1.0, "exact", "W8A8, per-channel scales (negligible)"), 1.0,
                         "int8", _EXACT_1, "gemm_int8"),
    "int4": WeightFormat("int4", Factor(0.5 + SCALE_ZERO_BYTES / INT4_GROUP, "exact",
                                        "W4A16, group 128: fp16 scale and zero per 128 weights"),
                         2.0, "bf16", Factor(W4A16_COMPUTE_OVERHEAD, "assumed",
                                             "dequantisation in the GEMM main loop"), "gemm_w4a16"),
}
KV_SPECS = {
    "bf16": KvFormat("bf16", 2.0, 0.0, "decode"),
    "fp8": KvFormat("fp8", 1.0, 0.0, "decode_kv_fp8"),
    "int8": KvFormat("int8", 1.0, SCALE_ZERO_BYTES, "decode_kv_int8"),
    "int4": KvFormat("int4", 0.5, SCALE_ZERO_BYTES, "decode_kv_int4"),
}


def weight_format(name: str) -> WeightFormat:
    if name not in WEIGHT_SPECS:
        raise ConfigError(f"unknown weight format '{name}'; expected one of {', '.join(WEIGHT_FORMATS)}")
    return WEIGHT_SPECS[name]


def kv_format(name: str) -> KvFormat:
    if name not in KV_SPECS:
        raise ConfigError(f"unknown KV cache dtype '{name}'; expected one of {', '.join(KV_FORMATS)}")
    return KV_SPECS[name]


def parse_formats(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """``bf16,fp8`` -> ('bf16', 'fp8'); an unknown name is an error naming the flag."""
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise ConfigError(f"{flag}: unknown format(s) {bad or [text]}; expected a comma-separated subset "
                          f"of {', '.join(allowed)}")
    return names


# ---- the work of a formatted operator ---------------------------------------------------------------

FP8_WEIGHT_ONLY = WeightFormat("fp8", Factor(1.0, "exact"), 2.0, "bf16",
                               Factor(1.0, "assumed", "FP8 weight-only (Marlin) on a GPU without FP8 "
                                                      "tensor cores: bf16 compute"), "gemm")


def resolve_weight_format(name: str, gpu: GpuSpec) -> WeightFormat:
    """The format as it runs on ``gpu``: FP8 weights on a card without FP8 tensor cores run weight-only."""
    wf = weight_format(name)
    if wf.peak != "bf16" and gpu.peak_tflops(wf.peak) <= 0:
        if wf.name == "fp8":
            return FP8_WEIGHT_ONLY
        raise ConfigError(f"{gpu.name} has no {wf.peak} tensor cores for {wf.name} weights")
    return wf


def gemm_work_for(model: ModelSpec, tp: int, layer: str, tokens: float, wf: WeightFormat) -> Work:
    """One linear layer with weights in ``wf``: weight bytes, activations in, bf16 out."""
    k, n = gemm_shape(model, tp, layer)
    return Work(*gemm_cost_for(k, n, tokens, wf))


def gemm_cost_for(k: int, n: int, tokens: float, wf: WeightFormat) -> tuple[float, float]:
    """(FLOPs, bytes) of ``tokens`` rows through a (k x n) weight in ``wf``."""
    flops = 2.0 * tokens * k * n * wf.compute_overhead.value
    nbytes = wf.bytes_per_weight.value * k * n + wf.activation_bytes * tokens * k + 2.0 * tokens * n
    return flops, nbytes


def decode_work_for(model: ModelSpec, tp: int, batch: float, context: float, kvf: KvFormat) -> Work:
    """Decode attention reading a KV cache stored in ``kvf``."""
    return decode_attention_work(model, tp, batch, context,
                                 kvf.bytes_per_element(model.head_dim).value)


_ALL_FORMATS: list[WeightFormat | KvFormat] = [*WEIGHT_SPECS.values(), *KV_SPECS.values()]
PROFILE_KIND_FORMATS: dict[str, WeightFormat | KvFormat] = {
    f.profile_kind: f for f in _ALL_FORMATS if f.profile_kind not in ("gemm", "decode")}
PRECISION_KINDS = tuple(PROFILE_KIND_FORMATS)


def base_kind(kind: str) -> str:
    """The bf16 kind whose fitted factors stand in for an unmeasured precision kind."""
    return "gemm" if kind.startswith("gemm") else "decode" if kind.startswith("decode") else kind


def kind_peak(kind: str) -> str:
    fmt = PROFILE_KIND_FORMATS.get(kind)
    return fmt.peak if isinstance(fmt, WeightFormat) else "bf16"


def precision_row_work(kind: str, model: ModelSpec, tp: int, a: float, b: str) -> Work:
    """The work of one profile row of a precision kind (a = tokens or batch, b = layer or context)."""
    fmt = PROFILE_KIND_FORMATS[kind]
    if isinstance(fmt, WeightFormat):
        return gemm_work_for(model, tp, b, a, fmt)
    return decode_work_for(model, tp, a, float(b), fmt)
