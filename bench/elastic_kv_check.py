"""Why the elastic loop misses the target on the SYNTHETIC day (``diurnal13`` of ``adaptive_bench.py``,
Llama-2-13B on 2x8 H100): the latency model the loop sizes the fleet with, against the simulator, on the
day's 240-720 s window (both sources mid-swing, ~24 req/s).

1. Fleets the loop chooses between (the SLO dispatch LP for the window's rates): the latency model's
   predicted goodput scale and per-type attainment at the window's rates, and the simulated attainment
   at 1x and 1.25x (the elastic headroom) of them (``replay_at_rate``).
2. One TP1 replica (512-token budget) at a share of the window's arrivals (independent thinning): the
   model's decoding batch, the sequences its KV cache holds at the mean context (90% of it, the mean
   only) and with the model's fluctuation margin (``kv_bound``), and its attainment, beside the simulated
   attainment and preemptions; the KV tokens held: the model's mean, its Poisson (Campbell) standard
   deviation and the one it uses (with the step time's feedback), beside the simulated mean and standard
   deviation (the occupancy rebuilt from the simulated timeline every 0.25 s after the first minute:
   ``simulated_kv_tokens``), and the model's and the simulated decode step.

Writes ``bench/results/elastic_kv_check.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision
from oserve.costmodel.latency_model import KV_HEADROOM, kv_occupancy_tokens
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Replica
from oserve.planner.slo_planner import Candidate, GoodputPlanner, candidate_plan
from oserve.sim.adaptive_experiment import attainment_of, rate_replayed, slo_of
from oserve.sim.api import simulate_plan
from oserve.sim.experiment import PreparedTrace
from oserve.switching.goodput_price import GoodputPricer, forecast_workload
from oserve.switching.policy import forecast_types
from oserve.workload.trace import Trace

sys.path.insert(0, str(Path(__file__).parent))
import adaptive_bench  # noqa: E402

WINDOW_S = (240.0, 720.0)
WARMUP_S = 60.0  # the simulated occupancy is sampled after the first minute (the replica starts empty)
SAMPLE_DT_S = 0.25
FLEETS = ((2, 1, 2, 512), (4, 1, 1, 512), (5, 1, 1, 512), (2, 2, 1, 1024))  # replicas, tp, pp, budget
SHARES = (0.15, 0.2, 0.22, 0.25)


def fleet(n: int, tp: int, pp: int, budget: int) -> tuple[Replica, ...]:
    cfg = ReplicaConfig(gpu_type="H100-80GB", tp=tp, pp=pp, max_num_batched_tokens=budget)
    return tuple(Replica(i, tuple(range(i * tp * pp, (i + 1) * tp * pp)), cfg) for i in range(n))


def _name(n: int, tp: int, pp: int, budget: int) -> str:
    return f"{n}x TP{tp}" + (f" PP{pp}" if pp > 1 else "") + f" ({budget} tok)"


def simulated_kv_tokens(res, start_s: float, end_s: float) -> np.ndarray:
    """The KV tokens the simulated replica's decoding sequences hold, every ``SAMPLE_DT_S`` s of
    ``[start_s, end_s)``, rebuilt from the simulated timeline: a request holds its prompt plus the tokens
    it has generated, from its first token to its finish, at the pace it was served (linear between the
    two). The model's quantity (decoding sequences; prompts being prefilled and block rounding left out)."""
    times = np.arange(start_s, end_s, SAMPLE_DT_S)
    ft, fin = res.first_token_s, res.finish_s
    done = ~np.isnan(ft) & ~np.isnan(fin)
    ft, fin = ft[done], fin[done]
    inp, out = res.input_tokens[done].astype(float), res.output_tokens[done].astype(float)
    held = np.zeros(len(times))
    for j, t in enumerate(times):
        live = (ft <= t) & (t < fin)
        frac = (t - ft[live]) / np.maximum(fin[live] - ft[live], 1e-9)
        held[j] = float((inp[live] + 1 + frac * (out[live] - 1)).sum())
    return held


def _sim_step_s(res, start_s: float) -> float:
    """The simulated time per decode step: decode time over decode tokens of requests arriving after
    ``start_s`` (token-weighted mean TPOT)."""
    ok = ~np.isnan(res.finish_s) & (res.arrival_s >= start_s) & (res.output_tokens > 1)
    return float((res.finish_s - res.first_token_s)[ok].sum() / (res.output_tokens[ok] - 1).sum())


def main() -> int:
    base = adaptive_bench._setup("diurnal13")
    p = base.prepared
    trace = p.trace.window(*WINDOW_S)
    setup = replace(base, prepared=PreparedTrace(trace, p.types, p.types.stats(trace), 0))
    rates = np.array([s.count / (WINDOW_S[1] - WINDOW_S[0]) for s in setup.prepared.stats])
    types = forecast_types(p.stats, rates)
    workload = forecast_workload(slo_of(base), types)  # what the loop prices with
    pricer = GoodputPricer(base.cluster, base.cost, workload, types, {})
    gp = GoodputPlanner(base.cluster, base.cost, types, workload)
    doc: dict = {"scenario": "diurnal13", "window_s": WINDOW_S, "rates_rps": rates.tolist(),
                 "git_revision": git_revision(), "fleets": [], "replica": []}
    for spec in FLEETS if "--replica-only" not in sys.argv else ():
        reps = fleet(*spec)
        fractions = pricer.dispatch(reps)
        plan = candidate_plan(Candidate("check", reps, fractions, 0.0), base.cost, types, "goodput", "check",
                              0.0)
        sims = {}
        for scale in (1.0, 1.25):
            scaled = rate_replayed(setup, scale)
            res = simulate_plan(plan, scaled.prepared.trace, p.types, base.cost, base.sim_config)
            sims[str(scale)] = list(attainment_of(scaled, res).per_type)
        doc["fleets"].append({"fleet": _name(*spec), "num_gpus": spec[0] * spec[1] * spec[2],
                              "predicted_goodput_scale": gp.predicted_scale(reps, fractions),
                              "predicted_attainment": pricer.attainment(reps, fractions).tolist(),
                              "simulated_attainment": sims})
        print(doc["fleets"][-1], flush=True)
    (one,) = fleet(1, 1, 1, 512)
    model = pricer.model(one.config)
    lay = model._layout(list(workload.samples), list(workload.slos))
    capacity = KV_HEADROOM * model.kv_tokens
    for share in SHARES:
        r = rates * share
        pred = model.predict_stationary(list(workload.samples), r, list(workload.slos))
        per = r[lay.typ] / lay.count[lay.typ]
        inp, out = lay.inp, lay.out
        ctx = float((per * out * (inp + out / 2)).sum()) / float((per * out).sum())
        step = model.decode_s(pred.batch, ctx) / (1.0 - pred.prefill_frac)
        mean = float((per * out * (inp + out / 2)).sum()) * step
        # M/G/inf: a sequence holds I + t tokens for t in [0, O) steps; integral of the square over its life
        var = float((per * (inp * inp * out + inp * out * out + out ** 3 / 3)).sum()) * step
        feedback = model.step_elasticity(pred.batch, ctx)
        _, pred_sd = kv_occupancy_tokens(per, inp, out, step, 1.0, feedback)
        kv_seqs = model.kv_bound(per, inp, out, pred.batch, ctx, step).seqs
        keep = np.random.default_rng(0).random(len(trace)) < share
        sub = Trace(trace.arrival_s[keep], trace.input_tokens[keep], trace.output_tokens[keep], "thinned",
                    dict(trace.meta))
        sub_setup = replace(setup, prepared=PreparedTrace(sub, p.types, p.types.stats(sub), 0))
        plan = candidate_plan(Candidate("one", (one,), np.ones((len(types), 1)), 0.0), base.cost, types,
                              "goodput", "one", 0.0)
        res = simulate_plan(plan, sub, p.types, base.cost, base.sim_config)
        held = simulated_kv_tokens(res, WINDOW_S[0] + WARMUP_S, WINDOW_S[1])
        doc["replica"].append({
            "share": share, "rate_rps": float(r.sum()), "predicted_batch": pred.batch,
            "kv_seqs_at_mean_context": capacity / ctx, "predicted_overloaded": pred.overloaded,
            "predicted_attainment": [t.attainment for t in pred.types],
            "simulated_attainment": list(attainment_of(sub_setup, res).per_type),
            "simulated_preemptions": int(res.summary(None, None)["preemptions"]),
            "kv_mean_tokens": mean, "kv_sd_tokens": var ** 0.5, "kv_capacity_tokens": capacity,
            "kv_headroom_sd": (capacity - mean) / var ** 0.5,
            "step_elasticity": feedback, "predicted_kv_sd_tokens": pred_sd, "kv_seqs_with_margin": kv_seqs,
            "model_step_s": step, "sim_step_s": _sim_step_s(res, WINDOW_S[0] + WARMUP_S),
            "sim_kv_mean_tokens": float(held.mean()), "sim_kv_sd_tokens": float(held.std()),
            "sim_kv_p99_tokens": float(np.quantile(held, 0.99)), "sim_kv_max_tokens": float(held.max())})
        print(doc["replica"][-1], flush=True)
    out_dir = Path(__file__).parent / "results"
    (out_dir / "elastic_kv_check.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "elastic_kv_check.md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    return 0


def _fmt(xs) -> str:
    return ", ".join(f"{x:.3f}" for x in xs if x is not None)


def markdown(doc: dict) -> str:
    lines = [f"diurnal13, window {doc['window_s'][0]:g}-{doc['window_s'][1]:g} s ("
             f"{sum(doc['rates_rps']):.1f} req/s), revision {doc['git_revision'][:7]}", "",
             "| fleet | GPUs | predicted goodput scale | predicted attainment at 1x | simulated at 1x | "
             "simulated at 1.25x |", "|---|---:|---:|---|---|---|"]
    for f in doc["fleets"]:
        sim = f["simulated_attainment"]
        lines.append(f"| {f['fleet']} | {f['num_gpus']} | {f['predicted_goodput_scale']:.3f} | "
                     f"{_fmt(f['predicted_attainment'])} | {_fmt(sim['1.0'])} | {_fmt(sim['1.25'])} |")
    lines += ["", "One TP1 replica (512 tok) at a share of the window's arrivals (KV capacity: 90% of the "
              "cache):", "",
              "| req/s | predicted batch | KV holds (seqs at mean context: mean only / with margin) | "
              "predicted attainment | simulated attainment | simulated preemptions | KV mean: predicted / "
              "simulated (tokens) | KV sd: Poisson / predicted / simulated (tokens) | capacity (tokens) | "
              "decode step: predicted / simulated (ms) |", "|---:|---:|---|---|---|---:|---|---|---:|---|"]
    for r in doc["replica"]:
        mean = f"{r['kv_mean_tokens']:.0f} / {r['sim_kv_mean_tokens']:.0f}"
        sd = f"{r['kv_sd_tokens']:.0f} / {r['predicted_kv_sd_tokens']:.0f} / {r['sim_kv_sd_tokens']:.0f}"
        step = f"{1e3 * r['model_step_s']:.1f} / {1e3 * r['sim_step_s']:.1f}"
        lines.append(f"| {r['rate_rps']:.2f} | {r['predicted_batch']:.1f} | "
                     f"{r['kv_seqs_at_mean_context']:.1f} / {r['kv_seqs_with_margin']:.1f} | "
                     f"{_fmt(r['predicted_attainment'])} | {_fmt(r['simulated_attainment'])} | "
                     f"{r['simulated_preemptions']} | {mean} | {sd} | {r['kv_capacity_tokens']:.0f} | "
                     f"{step} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
