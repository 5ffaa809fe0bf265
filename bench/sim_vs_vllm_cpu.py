"""The simulator held against a real engine: one short trace through vLLM-CPU replicas and `oserve simulate`.

    python bench/sim_vs_vllm_cpu.py --gpus bench/results/vllm/cpu_step_model.yaml \\
        [--requests 150] [--rps 0.3,0.8] [--replicas 1] [--out bench/results/vllm/sim_vs_vllm_cpu.json]
    python bench/sim_vs_vllm_cpu.py --profile-around ...   # fit the step model on the replay's replica

With --profile-around the step model is not read but fitted in the same run: the serving replica is
profiled (bench/vllm_cpu_profile.py's rows, over prefill lengths and decode batches that cover the
replay's) right before and right after the replay, by the same process on the same core under the same
load, and ``oserve costmodel fit`` on both passes prices the simulation; each pass is also fitted alone,
so the drift of the machine's conditions during the run is reported next to the comparison.

The trace is the first --requests of azure-conv, prompts clipped to --max-input-tokens and outputs to
--max-output-tokens (SmolLM2 on one core cannot serve the real lengths in minutes), its arrival times
stretched to each --rps (the trace's own burstiness kept). Measured: ``oserve serve --engine vllm
--replicas R --threads 1`` (prefix caching off: the load generator's synthetic prompts share their first
words, and the simulator has no prefix cache) replayed with ``oserve bench serve``. Simulated: ``oserve
simulate --plan`` with R ``vllm-cpu-1core`` fp32 replicas whose step model (--gpus, from ``oserve costmodel
fit`` on bench/vllm_cpu_profile.py's rows) prices every step. The simulator gets the prompt lengths vLLM
really sees: the load generator's synthetic prompt of each length is tokenised with the served model's own
tokenizer (in the vLLM venv). Reported overall (the run is too short for per-type P99s): P50/P99 TTFT, TPOT
and end-to-end latency, measured vs simulated and their ratio; load averages before and after each run.
To tell step times from scheduling, each load also gets ``ttft_breakdown`` (from the replay's per-request
records, ``oserve bench serve --records``: the requests that found the replica empty, whose TTFT is one
lone prefill, against the rest) and ``vllm_engine`` (the means of vLLM's own queue, prefill, TTFT and
inter-token histograms over the replay, from the replica's ``/metrics``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oserve.runtime.loadgen import synthetic_prompt  # noqa: E402
from oserve.workload import load_trace  # noqa: E402
from vllm_cpu_profile import profile, write_rows  # noqa: E402
from vllm_engines import ROOT, env, oserve, start_server, stop_server  # noqa: E402

DEVICE = "vllm-cpu-1core"
METRICS = ("ttft", "tpot", "e2e")
VLLM_HISTOGRAMS = tuple(f"{name}_seconds" for name in ("request_queue_time", "request_prefill_time",
                                                      "time_to_first_token", "inter_token_latency",
                                                      "e2e_request_latency"))


def prompt_tokens(vllm_python: str, model_dir: str, lengths: list[int]) -> dict[int, int]:
    """vLLM's prompt token count of the load generator's synthetic prompt of each nominal length."""
    code = ("import json, sys; from transformers import AutoTokenizer; "
            "tok = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "print(json.dumps([len(tok(p)['input_ids']) for p in json.load(sys.stdin)]))")
    done = subprocess.run([vllm_python, "-c", code, model_dir], input=json.dumps(
        [synthetic_prompt(n) for n in lengths]), capture_output=True, text=True, check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return dict(zip(lengths, json.loads(done.stdout.strip().splitlines()[-1])))


def write_trace(path: Path, arrival_s, inputs, outputs) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arrival_s", "input_tokens", "output_tokens"])
        w.writerows(zip((round(float(a), 4) for a in arrival_s), map(int, inputs), map(int, outputs)))


def plan_doc(replicas: int) -> dict:
    """R identical fp32 vLLM-CPU replicas, one request type spread evenly (what ``oserve serve
    --replicas R`` runs: no plan, the router's least-outstanding choice), at vLLM-CPU's own API-server
    defaults (2048 batched tokens, 128 sequences; vllm/engine/arg_utils.py), not the GPU ones."""
    reps = [{"replica_id": i, "gpus": [i], "tp": 1, "pp": 1, "gpu_type": DEVICE, "precision": "fp32",
             "max_num_batched_tokens": 2048, "max_num_seqs": 128} for i in range(replicas)]
    return {"model": "smollm2-135m", "planner": "vllm-cpu-fleet", "replicas": reps, "types": ["T0"],
            "type_rates_rps": [1.0], "capacity_rps": [[1.0]] * replicas,
            "dispatch": [[1.0 / replicas] * replicas], "demand_scale": 1.0,
            "utilisation": [0.0] * replicas, "bottlenecks": []}


def percentiles(values) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    return {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))} if len(v) else {}


def simulated(args, trace: Path, plan: Path, out_dir: Path) -> dict:
    cmd = oserve("simulate", "--plan", str(plan), "--planner", "", "--trace", str(trace),
                 "--model", "smollm2-135m", "--gpus", args.gpus, "--types", "1", "--out", str(out_dir),
                 "--json", "--no-progress", "--drain-s", "3600")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if done.returncode != 0:
        raise SystemExit(f"oserve simulate failed ({done.returncode}): {done.stderr[-3000:]}")
    records = out_dir / "records_plan_x1.csv"
    with records.open() as fh:
        rows = list(csv.DictReader(fh))

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else float("nan") for r in rows]

    return {"requests": len(rows), **{m: percentiles(col(f"{m}_s")) for m in METRICS}}


def vllm_histograms(vllm_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of vLLM's own per-request histograms, scraped from the replica's ``/metrics``."""
    text = httpx.get(vllm_url + "/metrics", timeout=30).text
    out = {}
    for name in VLLM_HISTOGRAMS:
        total = sum(float(v) for v in re.findall(rf"^vllm:{name}_sum{{[^}}]*}} (\S+)", text, re.M))
        count = sum(float(v) for v in re.findall(rf"^vllm:{name}_count{{[^}}]*}} (\S+)", text, re.M))
        out[name] = (total, count)
    return out


def measured(url: str, vllm_url: str, trace: Path, out: Path, args) -> dict:
    """One replay through ``oserve bench serve``: its percentiles, its per-request records (next to
    ``out``), and the means of vLLM's own histograms over the replay (engine side: queue time, prefill
    time from first scheduled to first token, TTFT, inter-token latency)."""
    cmd = oserve("bench", "serve", "--url", url, "--trace", str(trace), "--max-requests", str(args.requests),
                 "--max-input-tokens", "100000", "--max-output-tokens", "100000", "--types", "1",
                 "--max-duration-s", str(args.max_duration_s), "--json", "--out", str(out),
                 "--records", str(out.with_suffix(".records.csv")))
    load_before = os.getloadavg()
    hist_before = vllm_histograms(vllm_url)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if not out.is_file():
        raise SystemExit(f"oserve bench serve failed ({done.returncode}): {done.stderr[-2000:]}")
    hist_after = vllm_histograms(vllm_url)
    rep = json.loads(out.read_text())
    engine = {}
    for name in VLLM_HISTOGRAMS:
        total, count = (a - b for a, b in zip(hist_after[name], hist_before[name]))
        engine[name] = {"mean_s": total / count if count else None, "count": count}
    return {"requests": rep["num_sent"], "ok": rep["num_ok"], "failures": rep["failures"],
            "mean_output_tokens": rep["output_tokens_per_s"] * rep["duration_s"] / max(rep["num_ok"], 1),
            **{m: {p: rep.get(f"{p}_{m}_s") for p in ("p50", "p99")} for m in METRICS},
            "mean_ttft_s": rep.get("mean_ttft_s"), "vllm_engine": engine,
            "load_avg_before": load_before, "load_avg_after": os.getloadavg()}


def alone_at_arrival(start_s: np.ndarray, end_s: np.ndarray) -> np.ndarray:
    """Whether each request (in arrival order) found the replica empty: every earlier one had finished."""
    done_before = np.maximum.accumulate(np.concatenate([[-np.inf], end_s[:-1]]))
    return done_before <= start_s


def ttft_breakdown(measured_csv: Path, sim_csv: Path, tokens: dict[int, int], step_model: dict) -> dict:
    """Where the TTFTs differ, request by request: requests that found the (real, resp. simulated)
    replica empty pay one lone prefill step, which the step model prices as
    ``step_overhead_s + prefill_s_per_token * c + prefill_attention_s_per_token2 * c^2`` for a prompt
    of c tokens; the others also wait for and share steps (the scheduling). Medians of the per-request
    ratios, for the requests alone in both runs and for the rest."""
    with measured_csv.open() as fh:
        real = list(csv.DictReader(fh))
    with sim_csv.open() as fh:
        sim = list(csv.DictReader(fh))
    if len(real) != len(sim):
        return {"skipped": f"{len(real)} measured requests, {len(sim)} simulated: the runs cannot be paired"}
    # requests the real gateway refused (429) were never in the real system: paired are the served ones
    ok = np.array([r["status"] == "ok" for r in real])
    real, sim = [r for r, k in zip(real, ok) if k], [r for r, k in zip(sim, ok) if k]
    sent = np.array([float(r["sent_s"]) for r in real])
    real_ttft = np.array([float(r["ttft_s"]) for r in real])
    real_alone = alone_at_arrival(sent, sent + np.array([float(r["e2e_s"]) for r in real]))
    sim_ttft = np.array([float(r["ttft_s"]) for r in sim])
    sim_alone = alone_at_arrival(np.array([float(r["arrival_s"]) for r in sim]),
                                 np.array([float(r["finish_s"]) for r in sim]))
    prompt = np.array([tokens[int(r["input_tokens"])] for r in real], dtype=float)
    lone_price = (step_model["step_overhead_s"] + step_model["prefill_s_per_token"] * prompt
                  + step_model.get("prefill_attention_s_per_token2", 0.0) * prompt ** 2)
    both = real_alone & sim_alone

    def summary(mask: np.ndarray) -> dict:
        if not mask.any():
            return {"requests": 0}
        return {"requests": int(mask.sum()), "median_measured_ttft_s": float(np.median(real_ttft[mask])),
                "median_simulated_ttft_s": float(np.median(sim_ttft[mask])),
                "median_ratio_sim_over_measured": float(np.median(sim_ttft[mask] / real_ttft[mask])),
                "median_ratio_lone_price_over_measured": float(np.median(lone_price[mask] / real_ttft[mask])),
                "mean_prompt_tokens": float(prompt[mask].mean())}

    # alone_measured: the real replica's lone prefills against the step model's price of them
    return {"alone_in_both": summary(both), "queued_or_shared_in_either": summary(~both),
            "alone_measured": summary(real_alone), "alone_simulated": int(sim_alone.sum()),
            "refused_measured": int((~ok).sum())}


def profile_rows(url: str, args, label: str) -> list[dict]:
    """One bench/vllm_cpu_profile.py pass over the serving replica (--profile-around)."""
    settings = argparse.Namespace(prefill_tokens=args.profile_prefill_tokens,
                                  decode_batch=args.profile_decode_batch, decode_tokens=24,
                                  reps=args.profile_reps)
    print(f"profiling the replica ({label})", flush=True)
    return [{**row, "when": label} for row in asyncio.run(profile(url, settings))]


def fit_step_model(rows: list[dict], path: Path) -> dict:
    """``oserve costmodel fit`` on ``rows``; the catalog it writes and its step model."""
    write_rows(path.with_suffix(".csv"), [{k: v for k, v in r.items() if k != "when"} for r in rows])
    done = subprocess.run(oserve("costmodel", "fit", "--profile", str(path.with_suffix(".csv")), "--out",
                                 str(path)), capture_output=True, text=True, env=env())
    if done.returncode != 0:
        raise SystemExit(f"oserve costmodel fit failed ({done.returncode}): {done.stderr[-2000:]}")
    step = yaml.safe_load(path.read_text())["gpus"][0]["step_model"]
    return {"catalog": str(path), "rows": len(rows), **step}


def serve_and_measure(args, work: Path, loads: list[float], results: dict, out: Path) -> None:
    proc, url, start_s = start_server(["--engine", "vllm", "--replicas", str(args.replicas), "--threads",
                                       "1", "--vllm-python", args.vllm_python,
                                       "--vllm-extra-args=--no-enable-prefix-caching"],
                                      work / "serve.log")
    results["start_s"] = start_s
    # the replica's own vLLM server (one replica): the port oserve launched it on
    vllm_url = "http://127.0.0.1:" + re.findall(r"--port[= ](\d+)", (work / "serve.log").read_text())[0]
    rows: list[dict] = []
    try:
        if args.profile_around:
            rows += profile_rows(url, args, "before")
        for rps in loads:
            results["loads"][str(rps)] = {"measured": measured(url, vllm_url, work / f"real_{rps}.csv",
                                                               work / f"bench_{rps}.json", args)}
            out.write_text(json.dumps(results, indent=2))
        if args.profile_around:
            rows += profile_rows(url, args, "after")
    finally:
        stop_server(proc)
    if args.profile_around:
        write_rows(work / "profile_rows.csv", rows, extra=("when",))
        fit_around(results, rows, work, args)


def fit_around(results: dict, rows: list[dict], work: Path, args) -> None:
    """The step model fitted on the profile rows around the replay (both passes), and each pass alone:
    their spread is how much the machine's conditions moved while the replay ran."""
    results["step_models"] = {
        "before_and_after": fit_step_model(rows, work / "step_model.yaml"),
        **{when: fit_step_model([r for r in rows if r["when"] == when], work / f"step_model_{when}.yaml")
           for when in ("before", "after")}}
    args.gpus = results["step_models"]["before_and_after"]["catalog"]


def read_profile_rows(path: Path) -> list[dict]:
    """The rows ``serve_and_measure`` saved (``profile_rows.csv``: the CSV format plus ``when``)."""
    with path.open() as fh:
        return [{"kind": r["kind"], "a": float(r["a"]), "b": float(r["b"]), "ms": float(r["ms"]),
                 "when": r["when"]} for r in csv.DictReader(fh)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", help="GPU catalog YAML with the fitted vllm-cpu-1core (not with "
                   "--profile-around, which fits its own)")
    p.add_argument("--profile-around", action="store_true",
                   help="profile the serving replica right before and right after the replay and fit the "
                   "step model on those rows: the same process, core and load as the replay")
    p.add_argument("--profile-prefill-tokens", default="32,64,100,128,512",
                   help="nominal prompt lengths (vLLM counts ~2.5x as many tokens in the profile's numbers)")
    p.add_argument("--profile-decode-batch", default="1,8,16,32")
    p.add_argument("--profile-reps", type=int, default=3)
    p.add_argument("--vllm-python", default=os.environ.get("OSERVE_VLLM_PYTHON"))
    p.add_argument("--model-dir", default=None, help="the converted SmolLM2 folder (default: the cache's)")
    p.add_argument("--requests", type=int, default=150)
    p.add_argument("--rps", default="0.3,0.8")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-input-tokens", type=int, default=256)
    p.add_argument("--max-output-tokens", type=int, default=32)
    p.add_argument("--max-duration-s", type=float, default=900.0)
    p.add_argument("--out", default=str(ROOT / "bench/results/vllm/sim_vs_vllm_cpu.json"))
    p.add_argument("--simulate-only", action="store_true",
                   help="reuse the measured half of an earlier run's --out and simulate again (with "
                   "--profile-around: after fitting the step model again on that run's saved profile rows)")
    args = p.parse_args()
    if not args.vllm_python:
        raise SystemExit("--vllm-python (or OSERVE_VLLM_PYTHON) is required")
    if bool(args.gpus) == args.profile_around:
        raise SystemExit("give --gpus (a fitted catalog) or --profile-around (fit one here), not both")
    out = Path(args.out)
    work = out.parent / (out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or str(next((Path.home() / ".cache/oserve/models").glob("SmolLM2-135M*")))
    base = load_trace("azure-conv").head(args.requests)
    inputs = np.minimum(base.input_tokens, args.max_input_tokens)
    outputs = np.minimum(base.output_tokens, args.max_output_tokens)
    real_len = prompt_tokens(args.vllm_python, model_dir, sorted({int(n) for n in inputs}))
    plan = work / "plan.json"
    plan.write_text(json.dumps(plan_doc(args.replicas)))
    loads = [float(x) for x in args.rps.split(",")]
    for rps in loads:
        arrival = (base.arrival_s - base.arrival_s[0]) * (base.mean_rate_rps / rps)
        write_trace(work / f"real_{rps}.csv", arrival, inputs, outputs)
        write_trace(work / f"sim_{rps}.csv", arrival, [real_len[int(n)] for n in inputs], outputs)
    results: dict = {"settings": {k: getattr(args, k) for k in ("requests", "rps", "replicas",
                                                                "max_input_tokens", "max_output_tokens",
                                                                "profile_around")},
                     "mean_prompt_tokens": float(np.mean([real_len[int(n)] for n in inputs])),
                     "mean_output_tokens_trace": float(np.mean(outputs)), "cpus": os.cpu_count(),
                     "load_avg_at_start": os.getloadavg(), "loads": {}}
    if args.simulate_only:  # re-simulate the measured runs of an earlier --out
        results = {**results, **{k: v for k, v in json.loads(out.read_text()).items()
                                 if k in ("loads", "start_s")}}
        if args.profile_around:  # and refit the step model on that run's saved profile rows
            fit_around(results, read_profile_rows(work / "profile_rows.csv"), work, args)
    else:
        serve_and_measure(args, work, loads, results, out)
    for rps in loads:
        entry = results["loads"][str(rps)]
        entry["simulated"] = simulated(args, work / f"sim_{rps}.csv", plan, work / f"sim_{rps}")
        model = yaml.safe_load(Path(args.gpus).read_text())["gpus"][0]["step_model"]
        records = work / f"bench_{rps}.records.csv"
        if records.is_file():
            entry["ttft_breakdown"] = ttft_breakdown(records, work / f"sim_{rps}" / "records_plan_x1.csv",
                                                     real_len, model)
        entry["ratio_sim_over_measured"] = {
            m: {q: entry["simulated"][m][q] / entry["measured"][m][q]
                for q in ("p50", "p99") if entry["measured"][m].get(q) and entry["simulated"][m].get(q)}
            for m in METRICS}
    results["load_avg_at_end"] = os.getloadavg()
    out.write_text(json.dumps(results, indent=2))
    lines = ["| load (req/s) | metric | measured P50 | simulated P50 | ratio | measured P99 | simulated P99 "
             "| ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for rps in loads:
        e = results["loads"][str(rps)]
        for m in METRICS:
            me, si, ra = e["measured"][m], e["simulated"][m], e["ratio_sim_over_measured"][m]
            lines.append(f"| {rps} | {m.upper()} (s) | {me['p50']:.3f} | {si['p50']:.3f} "
                         f"| {ra.get('p50', 0):.2f} | {me['p99']:.3f} | {si['p99']:.3f} "
                         f"| {ra.get('p99', 0):.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
