"""Request-by-request identity of the simulator across two code versions.

``python bench/sim_identity.py dump OUT.pkl [--adaptive] [--large]`` runs the bench/sim_speed.py cases
(headline, by requests, by replicas, by rate), every dispatch policy and both batching modes on a 16-GPU
Llama-2-13B window of the mix trace, the ``drop`` context policy, and with ``--adaptive`` a subset of
bench/adaptive_bench.py (phases13 in every mode, phases70 switch-p2p and blind-p2p, with and without
re-dispatch), and with ``--large`` the 256-GPU case of bench/scale_bench.py and other large fleets
(48, 64 and 1,024 replicas, least-outstanding, spillover and round-robin: the router's large-fleet
paths). It stores every request's first-token and finish times, replica, preemptions and drop reason,
the per-replica statistics, event counts, summaries and switching timelines.
``compare A.pkl B.pkl`` prints, per run, IDENTICAL or what differs. Run ``dump`` once per version, with
PYTHONPATH pointing at that version's src/.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.sim.config import SimConfig
from oserve.sim.experiment import plan_for, prepare_trace, simulate_at

ARRAYS = ("first_token_s", "finish_s", "replica_id", "num_preemptions", "drop_reason")
REPLICA_FIELDS = ("replica_id", "label", "busy_s", "utilisation", "busy_frac_by_bin", "peak_kv_frac",
                  "num_steps", "num_events", "num_preemptions", "num_requests", "prefill_tokens",
                  "decode_tokens")


def fingerprint(res, extra: dict | None = None) -> dict:
    summary = res.summary()
    summary.pop("sim_wall_s", None)
    out = {k: np.asarray(getattr(res, k)).copy() for k in ARRAYS}
    out.update(num_events=res.num_events, end_s=res.end_s, in_system_area=res.in_system_area,
               summary=summary,
               replicas=[tuple(getattr(r, f) for f in REPLICA_FIELDS) for r in res.replicas])
    out.update(extra or {})
    return out


def static_runs(requests: int = 0):
    """(name, SimResult) of the static cases; ``requests`` > 0 keeps only each trace's head."""
    cost = CostModel(load_models().get("llama-2-70b"))
    prepared = prepare_trace("azure-conv", cost)
    if requests:
        prepared = prepare_trace(prepared.trace.head(requests), cost)
    plans = {p: plan_for(parse_cluster("4x8xH100-80GB"), cost, prepared, p) for p in ("default", "oserve")}
    for planner, plan in plans.items():
        yield f"headline_{planner}", simulate_at(plan, prepared, cost, SimConfig())
    for n in (2500, 5000, 10000):
        if n < len(prepared.trace):
            yield f"requests_{n}", simulate_at(plans["default"], prepare_trace(prepared.trace.head(n), cost),
                                               cost, SimConfig())
    for nodes in (1, 2, 8):
        plan = plan_for(parse_cluster(f"{nodes}x8xH100-80GB"), cost, prepared, "default")
        yield f"replicas_{2 * nodes}", simulate_at(plan, prepared, cost, SimConfig(), nodes / 4 * 4.0)
    for scale in (4.0, 8.0, 12.0):
        yield f"rate_{scale:g}", simulate_at(plans["default"], prepared, cost, SimConfig(), scale)
    cost13 = CostModel(load_models().get("llama-2-13b"))
    mix = prepare_trace("azure-mix", cost13, 4, 0, (0.0, 600.0))
    if requests:
        mix = prepare_trace(mix.trace.head(requests), cost13)
    plan = plan_for(parse_cluster("2x8xH100-80GB"), cost13, mix, "oserve", 3.0)
    for policy in ("least-outstanding", "spillover", "weighted-random", "round-robin"):
        yield f"dispatch_{policy}", simulate_at(plan, mix, cost13, SimConfig(dispatch=policy), 3.0)
    yield "prefill_first", simulate_at(plan, mix, cost13, SimConfig(batching="prefill-first"), 3.0)
    yield "context_drop", simulate_at(plan, mix, cost13, SimConfig(context_policy="drop", seed=3), 3.0)


def large_runs(requests: int = 0):
    """(name, SimResult) on large fleets of Llama-2-70B's default plan (TP4, two replicas per node):
    the conv trace tiled and replayed at 60% of the plan's predicted capacity, as bench/scale_bench.py."""
    sys.path.insert(0, str(Path(__file__).parent))
    from oserve.sim.experiment import PreparedTrace
    from scale_bench import LOAD_OF_CAPACITY, tiled_trace

    cost = CostModel(load_models().get("llama-2-70b"))
    base = prepare_trace("azure-conv", cost)
    for nodes, n, policy in ((32, 30_000, "least-outstanding"), (24, 20_000, "least-outstanding"),
                             (32, 20_000, "spillover"), (32, 20_000, "round-robin"),
                             (512, 20_000, "least-outstanding")):
        plan = plan_for(parse_cluster(f"{nodes}x8xH100-80GB"), cost, base, "default")
        trace = tiled_trace(requests or n, base.trace)
        trace = trace.scaled(LOAD_OF_CAPACITY * plan.demand_scale * base.trace.mean_rate_rps
                             / trace.mean_rate_rps)
        prepared = PreparedTrace(trace, base.types, base.types.stats(trace), 0)
        yield (f"large_{2 * nodes}_replicas_{policy}",
               simulate_at(plan, prepared, cost, SimConfig(dispatch=policy)))


def adaptive_runs():
    """(name, SimResult, extra) of the adaptive subset."""
    sys.path.insert(0, str(Path(__file__).parent))
    from dataclasses import replace

    import adaptive_bench as ab
    from oserve.sim.adaptive_experiment import compare

    for name, modes in (("convcode70", ("static-initial", "switch-p2p", "blind-p2p")),):
        for redispatch in (True, False):
            setup = replace(ab._setup(name, 600.0), redispatch=redispatch)
            for mode in modes:
                if mode.startswith("static") and not redispatch:
                    continue
                r = compare(setup, (mode,))[mode]
                extra = {k: r.get(k) for k in ("num_switches", "migrated", "requeued", "rerouted")}
                extra["timeline"] = [{k: v for k, v in vars(x).items() if k != "decide_seconds"}
                                     for x in r.get("timeline", ())]
                yield f"{name}_{mode}_{'redispatch' if redispatch else 'no_redispatch'}", r["result"], extra


def dump(path: str, adaptive: bool = False, requests: int = 0, large: bool = False) -> None:
    out = {}
    for name, res in [*static_runs(requests), *(large_runs(requests) if large else [])]:
        out[name] = fingerprint(res)
        print(f"{name}: {res.num_events} events, {res.wall_s:.1f} s", file=sys.stderr, flush=True)
    if adaptive:
        for name, res, extra in adaptive_runs():
            out[name] = fingerprint(res, extra)
            print(f"{name}: {res.num_events} events, {res.wall_s:.1f} s", file=sys.stderr, flush=True)
    with open(path, "wb") as fh:
        pickle.dump(out, fh)


def differences(x: dict, y: dict) -> list[str]:
    """What differs between two fingerprints of one run."""
    out = []
    for key, u in x.items():
        v = y.get(key)
        if isinstance(u, np.ndarray):
            if u.dtype.kind == "f":
                differ = ~((u == v) | (np.isnan(u) & np.isnan(v)))
            else:
                differ = u != v
            if differ.any():
                first = int(np.flatnonzero(differ)[0])
                out.append(f"{key}: {int(differ.sum())} requests differ, first at {first}")
        elif key == "summary":
            changed = [k for k in u if u[k] != v.get(k)]
            if changed:
                out.append("summary " + ", ".join(f"{k}: {u[k]} -> {v.get(k)}" for k in changed))
        elif key == "replicas":
            changed = {f for a, b in zip(u, v) for f, p, q in zip(REPLICA_FIELDS, a, b) if p != q}
            if len(u) != len(v):
                changed.add(f"count {len(u)} -> {len(v)}")
            if changed:
                out.append("replicas: " + ", ".join(sorted(changed)))
        elif u != v:
            out.append(f"{key}: {'(list)' if isinstance(u, list) else u} -> "
                       f"{'(list)' if isinstance(v, list) else v}")
    return out


def compare_files(path_a: str, path_b: str) -> int:
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        a, b = pickle.load(fa), pickle.load(fb)
    num_different = 0
    for name, x in a.items():
        if name not in b:
            print(f"{name}: missing in {path_b}")
            num_different += 1
            continue
        diffs = differences(x, b[name])
        num_different += bool(diffs)
        print(f"{name}: {'IDENTICAL' if not diffs else 'differs'}")
        for d in diffs:
            print(f"    {d}")
    return num_different


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("--adaptive", action="store_true")
    d.add_argument("--large", action="store_true", help="also the large fleets (minutes)")
    d.add_argument("--requests", type=int, default=0, help="first N requests of each trace (smoke tests)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.command == "dump":
        dump(args.out, args.adaptive, args.requests, args.large)
        return 0
    return 1 if compare_files(args.a, args.b) else 0


if __name__ == "__main__":
    sys.exit(main())
