"""Measure low-precision operators on a GPU, in the shared profile CSV format, for ``oserve costmodel fit``.

Run on a machine with an NVIDIA GPU and torch (triton optional); nothing else is needed, not even oserve:

    python bench/gpu_precision_profile.py --out bench/results/gpu_precision_profile.csv

It writes one row per measurement (columns gpu, kind, model, tp, a, b, ms; the format of
``../shared/data/profiles/h100_operator_profile.csv``) on that profile's model shapes:

- ``gemm_fp8``: ``torch._scaled_mm`` with e4m3 operands, per-token activation and per-channel weight scales
  (row-wise scaling), bf16 out; a = tokens, b = layer (qkv, o, up, down) of one TP shard.
- ``gemm_int8``: ``torch._int_mm`` (W8A8, int32 accumulate); the scale epilogue a fused kernel applies is
  not included.
- ``gemm_w4a16``: ``torch._weight_int4pack_mm`` (INT4 weights, group 128, bf16 activations: the tinygemm
  kernel, a stand-in for TurboMind's ``gemm_s4_f16``), when this torch build has it.
- ``decode_kv_fp8`` / ``decode_kv_int8``: one query token per sequence against a KV cache stored in fp8
  (e4m3) or INT8 (per-token, per-head scale and zero), dequantized to bf16 and attended with
  ``scaled_dot_product_attention``: a = batch, b = context length. The dequantization is a separate pass
  here, so these times bound a fused kernel's from above; docs/precision.md says so.
- ``ceiling_matmul_tflops_fp8`` / ``ceiling_matmul_tops_int8``: an 8192^3 product's rate.

Tokens below 16 (32 for INT8) are padded to what the kernels accept, as engines pad small batches. The
run stops adding rows after ``--budget-s`` seconds (default 420, so it fits an 8-minute slot) and writes
every row as soon as it is measured. ``--quick`` runs a handful of shapes; ``--device cpu`` runs the
kinds that exist on a CPU on one tiny shape (a smoke test of the script itself, not a measurement to fit).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

# The profile's models (hidden, heads, kv heads, ffn, gated): the shapes of h100_operator_profile.csv.
MODELS = {
    "llama-2-7b": (4096, 32, 32, 11008, True),
    "llama-3-8b": (4096, 32, 8, 14336, True),
    "llama-2-13b": (5120, 40, 40, 13824, True),
    "opt-30b": (7168, 56, 56, 28672, False),
    "llama-2-70b": (8192, 64, 8, 28672, True),
    "tiny": (256, 2, 2, 512, True),  # --device cpu only: a smoke test of the script, not a profile
}
TPS = (1, 2, 4, 8)
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DECODE_BATCH = (1, 4, 16, 32, 64, 128, 256)
DECODE_CONTEXT = (128, 512, 1024, 2048, 4096, 8192)
LAYERS = ("qkv", "o", "up", "down")
HEAD_DIM = 128
GEMM_KINDS = ("gemm_fp8", "gemm_int8", "gemm_w4a16")
DECODE_KINDS = ("decode_kv_fp8", "decode_kv_int8")


def gemm_shape(model: str, tp: int, layer: str) -> tuple[int, int]:
    """(in_features, out_features) of one linear layer on one TP shard (as oserve's cost model)."""
    h, heads, kvh, ffn, gated = MODELS[model]
    kv_shard = max(1, math.ceil(kvh / tp))
    return {"qkv": (h, heads * HEAD_DIM // tp + 2 * kv_shard * HEAD_DIM),
            "o": (heads * HEAD_DIM // tp, h),
            "up": (h, (2 if gated else 1) * ffn // tp),
            "down": (ffn // tp, h)}[layer]


def time_ms(torch, fn, device: str, reps_ms: float = 20.0) -> float:
    """Median time of ``fn``: triton's do_bench on a GPU (cache flushed), a plain loop on a CPU."""
    if device == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=5, rep=reps_ms))
        except ImportError:
            pass
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_gemm(torch, kind: str, m: int, k: int, n: int, device: str):
    """A closure running one GEMM of the kind, or raises if this torch/device lacks it."""
    if kind == "gemm_fp8":
        m_pad = max(16, -(-m // 16) * 16)
        a = torch.randn(m_pad, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()  # column-major
        sa = torch.rand(m_pad, 1, device=device, dtype=torch.float32)
        sb = torch.rand(1, n, device=device, dtype=torch.float32)
        return lambda: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    if kind == "gemm_int8":
        m_pad = max(32, -(-m // 8) * 8)
        a = torch.randint(-127, 127, (m_pad, k), device=device, dtype=torch.int8)
        b = torch.randint(-127, 127, (n, k), device=device, dtype=torch.int8).t()
        return lambda: torch._int_mm(a, b)
    if kind == "gemm_w4a16":
        group = 128
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randint(0, 256, (n, k // 2), device=device, dtype=torch.uint8)
        packed = torch._convert_weight_to_int4pack(w, 8)
        sz = torch.rand(k // group, n, 2, device=device, dtype=torch.bfloat16)
        return lambda: torch._weight_int4pack_mm(x, packed, group, sz)
    raise ValueError(kind)


def make_decode(torch, kind: str, batch: int, context: int, heads: int, kv_heads: int, device: str):
    """Decode attention over a quantized KV cache: dequantize, then SDPA (GQA by head repetition)."""
    f = torch.nn.functional
    q = torch.randn(batch, heads, 1, HEAD_DIM, device=device, dtype=torch.bfloat16)
    shape = (batch, kv_heads, context, HEAD_DIM)
    rep = heads // kv_heads
    if kind == "decode_kv_fp8":
        k8 = torch.randn(shape, device=device).to(torch.float8_e4m3fn)
        v8 = torch.randn(shape, device=device).to(torch.float8_e4m3fn)
        scale = torch.tensor(0.5, device=device, dtype=torch.bfloat16)

        def run():
            k = (k8.to(torch.bfloat16) * scale).repeat_interleave(rep, dim=1)
            v = (v8.to(torch.bfloat16) * scale).repeat_interleave(rep, dim=1)
            return f.scaled_dot_product_attention(q, k, v)
        return run
    if kind == "decode_kv_int8":
        k8 = torch.randint(0, 255, shape, device=device, dtype=torch.uint8)
        v8 = torch.randint(0, 255, shape, device=device, dtype=torch.uint8)
        sk = torch.rand(batch, kv_heads, context, 2, device=device, dtype=torch.bfloat16)

        def run():
            k = (k8.to(torch.bfloat16) * sk[..., :1] + sk[..., 1:]).repeat_interleave(rep, dim=1)
            v = (v8.to(torch.bfloat16) * sk[..., :1] + sk[..., 1:]).repeat_interleave(rep, dim=1)
            return f.scaled_dot_product_attention(q, k, v)
        return run
    raise ValueError(kind)


def plan_rows(quick: bool, smoke: bool = False) -> list[tuple]:
    """(kind, model, tp, a, b) of every row to measure, the kinds interleaved so that a budget cut
    thins every kind evenly instead of dropping the last ones."""
    models = ["tiny"] if smoke else ["llama-2-7b", "llama-2-70b"] if quick else list(MODELS)
    tokens = (1, 16) if smoke else (1, 64, 2048) if quick else TOKENS
    tps = (1,) if smoke else (1, 4) if quick else TPS
    batches = (1, 4) if smoke else (1, 32) if quick else DECODE_BATCH
    contexts = (64,) if smoke else (512, 4096) if quick else DECODE_CONTEXT
    per_kind = [[(kind, m, tp, t, layer) for m in models for tp in tps for t in tokens for layer in LAYERS]
                for kind in GEMM_KINDS]
    per_kind += [[(kind, m, tp, bsz, ctx) for m in models for tp in tps for bsz in batches
                  for ctx in contexts] for kind in DECODE_KINDS]
    return [row for group in itertools.zip_longest(*per_kind) for row in group if row is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/gpu_precision_profile.csv")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop adding rows after this long")
    ap.add_argument("--quick", action="store_true", help="a handful of shapes per kind")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (use --device cpu for a smoke run)",
              file=sys.stderr)
        return 2
    gpu_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    skipped: dict[str, str] = {}
    written = 0
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["gpu", "kind", "model", "tp", "a", "b", "ms"])
        for kind, unit in (("ceiling_matmul_tflops_fp8", "gemm_fp8"), ("ceiling_matmul_tops_int8",
                                                                       "gemm_int8")):
            n = 256 if args.device == "cpu" else 1024 if args.quick else 8192
            try:
                ms = time_ms(torch, make_gemm(torch, unit, n, n, n, args.device), args.device)
                writer.writerow([gpu_name, kind, "-", 1, n, n, round(2 * n ** 3 / (ms * 1e-3) / 1e12, 1)])
            except Exception as exc:  # a kernel this torch/GPU lacks: say so, measure the rest
                skipped[kind] = f"{type(exc).__name__}: {exc}"[:300]
        for kind, model, tp, a, b in plan_rows(args.quick, smoke=args.device == "cpu"):
            if time.monotonic() - started > args.budget_s:
                skipped.setdefault("budget", f"stopped after {args.budget_s:.0f} s")
                break
            if kind in skipped:
                continue
            _, heads, kvh, _, _ = MODELS[model]
            try:
                if kind in GEMM_KINDS:
                    k, n = gemm_shape(model, tp, b)
                    fn = make_gemm(torch, kind, a, k, n, args.device)
                else:
                    fn = make_decode(torch, kind, a, b, heads // tp, max(1, math.ceil(kvh / tp)),
                                     args.device)
                ms = time_ms(torch, fn, args.device)
            except Exception as exc:
                skipped[kind] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            writer.writerow([gpu_name, kind, model, tp, a, b, f"{ms:.5f}"])
            fh.flush()
            written += 1
    meta = {"gpu": gpu_name, "torch": torch.__version__, "rows": written, "skipped": skipped,
            "seconds": round(time.monotonic() - started, 1), "quick": args.quick}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
