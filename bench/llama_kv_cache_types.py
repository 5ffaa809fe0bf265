"""llama.cpp's quantized KV cache on the embedded model: the CPU instance of the KV-format dimension.

Runs SmolLM2-135M (the embedded engine's model) through llama-cpp-python with the cache types an
embedded replica gets for each ``kv_cache_dtype`` (``oserve.runtime.llama_kv``: bf16 -> llama.cpp's
default f16 cache, int8 -> q8_0, int4 -> q4_0, the quantized ones with flash attention, which llama.cpp
needs for a quantized V cache), plus f16 with flash attention so that the cache type's own effect can
be told apart from the attention kernel's. Greedy decoding of the same prompts (six short chat prompts
and one long one, so that decode attends over a longer cache). Reported per cache type:

- memory: the KV buffer llama.cpp allocates for ``n_ctx`` cells (read from its own load log, checked
  against the block arithmetic) and its compute buffer;
- speed: decode tokens/s (first generated token to last) and whole-request tokens/s, medians over
  interleaved repetitions (a shared 2-core machine is noisy: compare the ratios within one run);
- quality: greedy agreement with the f16 default cache and with f16 under flash attention (the kernel
  the quantized caches run, so that the cache type's own effect shows): the share of generated tokens
  equal to the reference's until the first difference, and the share of identical completions.

    nice -n 10 python bench/llama_kv_cache_types.py   # writes bench/results/llama_kv_cache_types.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from oserve.runtime.llama_engine import _chat_formatter, load_llama  # noqa: E402
from oserve.runtime.llama_kv import kv_bytes_per_value, llama_cache_type, llama_kv_options  # noqa: E402
from results_table import write_results  # noqa: E402

# row name -> (the replica's kv_cache_dtype, extra Llama keywords)
VARIANTS = {"f16 (bf16 replica, engine default)": ("bf16", {}),
            "f16 + flash attention": ("bf16", {"flash_attn": True}),
            "q8_0 (int8 replica)": ("int8", {}),
            "q4_0 (int4 replica)": ("int4", {})}
REFERENCE = "f16 (bf16 replica, engine default)"
SAME_KERNEL = "f16 + flash attention"  # the quantized caches run with flash attention: same kernel
PROMPTS = ["Explain why the sky is blue in three sentences.",
           "Write a Python function that checks whether a string is a palindrome.",
           "List five tips for a job interview.",
           "What is the capital of Australia, and why is it not Sydney?",
           "Summarise the plot of Romeo and Juliet.",
           "Give me a recipe for pancakes."]
LONG_PARAGRAPH = ("The committee met on Tuesday to review the budget for next year. After a long "
                  "discussion of public transport, schools and the repair of the old bridge, it agreed "
                  "to raise spending on buses by ten percent and to delay the new library. ")
KV_LOG = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
COMPUTE_LOG = re.compile(r"CPU compute buffer size =\s*([\d.]+) MiB")


@contextlib.contextmanager
def captured_stderr():
    """llama.cpp's load log into a list of lines, for the buffer sizes it reports. llama-cpp-python
    forwards the log to ``sys.stderr``; native code may write file descriptor 2: both are captured."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    python_side = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stderr(python_side):
                yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())
            lines.extend(python_side.getvalue().splitlines())


def load_variant(path: str, kv_cache_dtype: str, extra: dict, n_ctx: int, threads: int):
    from llama_cpp import Llama

    with captured_stderr() as log:
        llm = load_llama(Llama, False, model_path=path, n_ctx=n_ctx, n_threads=threads, seed=0,
                         verbose=True, **{**llama_kv_options(kv_cache_dtype), **extra})
    llm.verbose = False  # the log was only wanted for the buffer sizes
    text = "\n".join(log)
    kv, compute = KV_LOG.search(text), COMPUTE_LOG.search(text)
    if kv is None:
        raise RuntimeError("llama.cpp's load log has no 'llama_kv_cache: size' line: " + text[-500:])
    return llm, float(kv.group(1)) * 2**20, float(compute.group(1)) * 2**20 if compute else None


def chat_tokens(llm, text: str) -> list[int]:
    """A user message rendered with the model's chat template, as the embedded engine renders it."""
    prompt = _chat_formatter(llm)(messages=[{"role": "user", "content": text}]).prompt
    return llm.tokenize(prompt.encode(), add_bos=False, special=True)


def kv_bytes_per_token(llm, cache_type: str) -> float:
    meta = llm.metadata
    head_dim = int(meta["llama.embedding_length"]) // int(meta["llama.attention.head_count"])
    values = 2 * int(meta["llama.block_count"]) * int(meta["llama.attention.head_count_kv"]) * head_dim
    return values * kv_bytes_per_value(cache_type)


def generate(llm, tokens: list[int], max_tokens: int) -> tuple[list[int], float, float | None]:
    """Greedy tokens, whole-request seconds, decode seconds (first token to last; None if < 2)."""
    llm.reset()
    generated: list[int] = []
    t0 = time.perf_counter()
    t_first = None
    for tok in llm.generate(tokens, top_k=1, temp=0.0, reset=True):
        if tok == llm.token_eos() or len(generated) >= max_tokens:
            break
        generated.append(tok)
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    decode = t_end - t_first if t_first is not None and len(generated) > 1 else None
    return generated, t_end - t0, decode


def agreement(outputs: list[list[int]], ref: list[list[int]]) -> tuple[float, float]:
    prefix = total = identical = 0
    for a, b in zip(outputs, ref):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefix, total, identical = prefix + n, total + len(b), identical + int(a == b)
    return prefix / max(total, 1), identical / max(len(ref), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--long-prompt-tokens", type=int, default=600, help="0: no long prompt")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="short prompts used (1-6)")
    ap.add_argument("--out", default="bench/results/llama_kv_cache_types")
    args = ap.parse_args(argv)
    from oserve.runtime.embedded_model import find_embedded_gguf

    path = str(find_embedded_gguf())
    started = time.perf_counter()
    models, memory = {}, {}
    for name, (dtype, extra) in VARIANTS.items():
        llm, kv_bytes, compute_bytes = load_variant(path, dtype, extra, args.n_ctx, args.threads)
        models[name] = llm
        memory[name] = (kv_bytes, compute_bytes)
    first = next(iter(models.values()))
    texts = list(PROMPTS[: args.prompts])
    if args.long_prompt_tokens:  # about that many tokens of text, then the question
        paragraph_tokens = len(first.tokenize(LONG_PARAGRAPH.encode(), add_bos=False))
        repeats = max(1, args.long_prompt_tokens // paragraph_tokens)
        texts.append(LONG_PARAGRAPH * repeats + "\nSummarise this in one line.")
    prompts = [chat_tokens(first, text) for text in texts]
    outputs: dict[str, list[list[int]]] = {n: [] for n in VARIANTS}
    rates: dict[str, dict[str, list[float]]] = {n: {"decode": [], "request": []} for n in VARIANTS}
    for rep in range(args.repeats):
        for tokens in prompts:
            for name, llm in models.items():  # interleaved, so load drifts hit every variant alike
                generated, total_s, decode_s = generate(llm, tokens, args.max_tokens)
                rates[name]["request"].append(len(generated) / total_s)
                if decode_s:
                    rates[name]["decode"].append((len(generated) - 1) / decode_s)
                if rep == 0:
                    outputs[name].append(generated)
    result: dict = {"model": Path(path).name, "n_ctx": args.n_ctx, "threads": args.threads,
                    "prompt_tokens": [len(p) for p in prompts], "max_tokens": args.max_tokens,
                    "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
                    "load_average": os.getloadavg(), "variants": {}}
    for name, (dtype, _) in VARIANTS.items():
        cache_type = llama_cache_type(dtype)
        prefix, identical = agreement(outputs[name], outputs[REFERENCE])
        prefix_fa, identical_fa = agreement(outputs[name], outputs[SAME_KERNEL])
        kv_bytes, compute_bytes = memory[name]
        result["variants"][name] = {
            "kv_cache_dtype": dtype, "llama_cache_type": cache_type,
            "kv_buffer_bytes_reported": kv_bytes,
            "kv_bytes_per_token_computed": kv_bytes_per_token(models[name], cache_type),
            "compute_buffer_bytes_reported": compute_bytes,
            "decode_tokens_per_s_median": statistics.median(rates[name]["decode"]),
            "request_tokens_per_s_median": statistics.median(rates[name]["request"]),
            "greedy_prefix_agreement": prefix, "identical_completions": identical,
            "greedy_prefix_agreement_vs_f16_flash": prefix_fa,
            "identical_completions_vs_f16_flash": identical_fa, "tokens": outputs[name]}
    base = result["variants"][REFERENCE]
    for v in result["variants"].values():
        v["kv_buffer_vs_f16"] = v["kv_buffer_bytes_reported"] / base["kv_buffer_bytes_reported"]
        v["decode_speed_vs_f16"] = v["decode_tokens_per_s_median"] / base["decode_tokens_per_s_median"]
    result["seconds"] = round(time.perf_counter() - started, 1)
    rows = [[name, f"{v['kv_buffer_bytes_reported'] / 2**20:.2f} MiB",
             f"{v['kv_bytes_per_token_computed']:.0f}", f"{v['kv_buffer_vs_f16']:.3f}",
             f"{(v['compute_buffer_bytes_reported'] or 0) / 2**20:.1f} MiB",
             f"{v['decode_tokens_per_s_median']:.1f}", f"{v['decode_speed_vs_f16']:.2f}",
             f"{v['request_tokens_per_s_median']:.1f}", f"{v['greedy_prefix_agreement']:.1%}",
             f"{v['identical_completions']:.0%}", f"{v['greedy_prefix_agreement_vs_f16_flash']:.1%}",
             f"{v['identical_completions_vs_f16_flash']:.0%}"] for name, v in result["variants"].items()]
    title = (f"llama.cpp KV cache types on {result['model']} ({len(prompts)} prompts of "
             f"{min(result['prompt_tokens'])}-{max(result['prompt_tokens'])} tokens, greedy, "
             f"{args.max_tokens} tokens, {args.repeats} repeats, {args.threads} thread(s), "
             f"n_ctx {args.n_ctx})")
    notes = [f"Measured on a shared machine (load average at the end "
             f"{', '.join(f'{x:.1f}' for x in result['load_average'])}): compare the ratios within "
             "this run. KV buffer and compute buffer are the sizes llama.cpp reports when it loads; "
             "agreement is with the f16 cache, without flash attention (the engine's default) "
             "and with it (the attention kernel the quantized caches run: the cache type's own effect)."]
    header = ["cache", "KV buffer", "KV bytes/token (computed)", "KV x f16", "compute buffer",
              "decode tok/s (median)", "decode x f16", "request tok/s", "greedy prefix agreement",
              "identical completions", "prefix agreement vs f16+FA", "identical vs f16+FA"]
    print(write_results(args.out, result, title, header, rows, notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
