"""Step times of one real vLLM-CPU replica behind oserve, as profile rows for ``oserve costmodel fit``.

    python bench/vllm_cpu_profile.py --vllm-python VENV/bin/python [--prefill-tokens 32,128,384]
        [--decode-batch 1,4,8] [--out bench/results/vllm/cpu_profile.csv]

``oserve serve --engine vllm --replicas 1 --threads 1`` is started, then, through its streaming API:

- prefill: one request at a time (concurrency 1) with a prompt of about P tokens and one output token;
  its time to first token is one prefill step of P tokens plus the request's fixed path (HTTP, gateway,
  tokenisation, which the fit folds into the step overhead). Row ``step_prefill``: a = prompt tokens
  (vLLM's own count from the usage block), b = 1 (sequences), ms = TTFT.
- decode: B streams started together with a short prompt and --decode-tokens output tokens each; a
  stream's time per output token after its first is one decode step at batch B. Row ``step_decode``:
  a = B, b = the mean context (prompt + half the output), ms = the median over the B streams.

Each point is repeated --reps times and every repetition is a row (the fit sees the noise). The load
average before and after is written next to the CSV (``.json``), since the 2 cores are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_engines import ROOT, start_server, stop_server  # noqa: E402

DEVICE = "vllm-cpu-1core"
MODEL = "smollm2-135m"


async def stream_one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    """One streamed completion: send time, token arrival times and vLLM's prompt token count."""
    model = (await client.get(url + "/v1/models")).json()["data"][0]["id"]
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    arrivals: list[float] = []
    prompt_tokens = None
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"completion failed ({resp.status_code}): {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                arrivals.append(time.perf_counter())
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    if not arrivals:
        raise SystemExit("a completion streamed no tokens")
    return {"sent": sent, "arrivals": arrivals, "prompt_tokens": prompt_tokens}


def words(n: int) -> str:
    # distinct numbers, so no two prompts share a prefix (prefix caching is also off)
    return " ".join(str(1000 + (i * 7919) % 9000) for i in range(n))


async def profile(url: str, args) -> list[dict]:
    rows = []
    async with httpx.AsyncClient() as client:
        await stream_one(client, url, words(8), 2)  # warm-up
        for p in [int(x) for x in args.prefill_tokens.split(",")]:
            for rep in range(args.reps):
                r = await stream_one(client, url, f"{rep} " + words(max(1, p // 2)), 1)
                rows.append({"kind": "step_prefill", "a": r["prompt_tokens"], "b": 1,
                             "ms": 1e3 * (r["arrivals"][0] - r["sent"])})
                print(f"prefill {r['prompt_tokens']:>4} tok: {rows[-1]['ms']:7.1f} ms", flush=True)
        for b in [int(x) for x in args.decode_batch.split(",")]:
            for rep in range(args.reps):
                rs = await asyncio.gather(*(stream_one(client, url, f"{rep} {i} " + words(8),
                                                       args.decode_tokens) for i in range(b)))
                # a stream that hit EOS early still times its steps (the gateway passes no ignore_eos)
                tpots = [(r["arrivals"][-1] - r["arrivals"][0]) / (len(r["arrivals"]) - 1) for r in rs
                         if len(r["arrivals"]) > 1]
                ctx = statistics.mean(r["prompt_tokens"] for r in rs) + args.decode_tokens / 2
                rows.append({"kind": "step_decode", "a": b, "b": round(ctx, 1),
                             "ms": 1e3 * statistics.median(tpots)})
                print(f"decode batch {b:>2}: {rows[-1]['ms']:7.1f} ms/token", flush=True)
    return rows


def write_rows(out: Path, rows: list[dict], extra: tuple[str, ...] = ()) -> None:
    """Profile rows in the shared CSV format (``oserve costmodel fit --profile``), plus the ``extra``
    columns of the rows (a file with them is for reading back, not for the fit)."""
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["gpu", "kind", "model", "tp", "a", "b", "ms", *extra])
        w.writeheader()
        for r in rows:
            w.writerow({"gpu": DEVICE, "model": MODEL, "tp": 1, **r, "ms": round(r["ms"], 3)})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vllm-python", default=os.environ.get("OSERVE_VLLM_PYTHON"))
    p.add_argument("--prefill-tokens", default="32,128,384")
    p.add_argument("--decode-batch", default="1,4,8")
    p.add_argument("--decode-tokens", type=int, default=24)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench/results/vllm/cpu_profile.csv"))
    args = p.parse_args()
    if not args.vllm_python:
        raise SystemExit("--vllm-python (or OSERVE_VLLM_PYTHON) is required")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    proc, url, start_s = start_server(["--engine", "vllm", "--replicas", "1", "--threads", "1",
                                       "--vllm-python", args.vllm_python,
                                       "--vllm-extra-args=--no-enable-prefix-caching"],
                                      out.with_suffix(".log"))
    try:
        rows = asyncio.run(profile(url, args))
    finally:
        stop_server(proc)
    write_rows(out, rows)
    out.with_suffix(".json").write_text(json.dumps(
        {"start_s": start_s, "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
         "cpus": os.cpu_count(), "settings": {k: getattr(args, k) for k in
                                              ("prefill_tokens", "decode_batch", "decode_tokens", "reps")}},
        indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
