"""CPU cost of evaluating tokens with llama.cpp in one batch vs one at a time (the guard's scoring pass).

    python bench/llama_eval_batching.py [--tokens 24] [--repeats 3]

The leakage guard's scoring pass (``runtime/llama_scoring.LlamaScorer``) evaluates chat plus answer in
one ``Llama.eval`` batch, with ``logits_all`` on. This times, on the embedded SmolLM2-135M GGUF with one
thread, the CPU seconds (``time.process_time``: what this process used, whatever the machine's load) of
the same tokens evaluated in one batch (instances with ``logits_all`` off and on) and one token per
``eval`` call. Results: bench/results/guard/llama_eval_batching.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from oserve.common.provenance import git_revision  # noqa: E402

TEXT = (b"The largest ocean on Earth is the Pacific Ocean, which covers about a third of the planet's "
        b"surface and holds more than half of its free water, far more than any other ocean.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench/results/guard/llama_eval_batching.json"))
    args = p.parse_args(argv)
    from llama_cpp import Llama

    from oserve.runtime.embedded_model import find_embedded_gguf
    from oserve.runtime.llama_engine import load_llama

    path = str(find_embedded_gguf())
    inst = {logits_all: load_llama(Llama, False, model_path=path, n_ctx=2048, n_threads=1,
                                   logits_all=logits_all, verbose=False) for logits_all in (False, True)}
    tokens = inst[True].tokenize(TEXT, add_bos=True)[:args.tokens]
    runs: dict[str, list[float]] = {"batch_logits_all_off": [], "batch_logits_all_on": [], "one_by_one": []}
    for _ in range(args.repeats):
        for logits_all, llama in inst.items():
            llama.n_tokens = 0
            start = time.process_time()
            llama.eval(tokens)
            runs[f"batch_logits_all_{'on' if logits_all else 'off'}"].append(time.process_time() - start)
        llama = inst[True]
        llama.n_tokens = 0
        start = time.process_time()
        for token in tokens:
            llama.eval([token])
        runs["one_by_one"].append(time.process_time() - start)
        print({k: round(v[-1], 3) for k, v in runs.items()}, flush=True)
    out = {"settings": vars(args) | {"num_tokens": len(tokens), "git_revision": git_revision(),
                                     "platform": platform.platform()},
           "cpu_s": runs, "median_cpu_s": {k: sorted(v)[len(v) // 2] for k, v in runs.items()}}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["median_cpu_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
