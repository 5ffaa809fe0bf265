"""From ``oserve serve`` arguments to a ready-to-start ``ServingRuntime``: types, plan, engines, control
policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Plan, Replica
from oserve.runtime.embedded_model import EMBEDDED_MODEL_NAME
from oserve.runtime.engine import Engine
from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.errors import ClientRequestError
from oserve.runtime.serving import RuntimeConfig, ServingRuntime
from oserve.runtime.static_plan import static_plan
from oserve.switching.control import ControlPolicy
from oserve.switching.replan_gate import ReplanConfig
from oserve.workload import fit_request_types, load_trace


def served_name(args) -> str:
    if args.served_model_name:
        return args.served_model_name
    if args.engine == "embedded":
        return EMBEDDED_MODEL_NAME
    return args.remote_model or args.hf_model or args.model or "oserve-fake"


def engine_spec(args, num_replicas: int) -> EngineSpec:
    if args.engine in ("embedded", "llama"):
        # leave one core to the gateway: llama.cpp threads that share a core spin and slow down a lot
        threads = args.threads or max(1, ((os.cpu_count() or 1) - 1) // max(1, num_replicas))
        options = {"context_tokens": args.context_tokens, "num_threads": threads}
        if args.engine == "llama":
            if not args.model_path:
                raise ClientRequestError("--engine llama needs --model-path FILE.gguf")
            options["model_path"] = args.model_path
        return EngineSpec(args.engine, options)
    if args.engine == "remote":
        if not (args.remote_url and args.remote_model):
            raise ClientRequestError("--engine remote needs --remote-url and --remote-model")
        return EngineSpec("remote", {"url": args.remote_url, "model": args.remote_model,
                                     "context_tokens": args.context_tokens})
    if args.engine == "vllm":
        if not args.hf_model:
            raise ClientRequestError("--engine vllm needs --hf-model (weights id or path)")
        return EngineSpec("vllm", {"model": args.hf_model, "served_name": served_name(args)})
    return EngineSpec("fake", {"prefill_s_per_token": 1e-4, "decode_s_per_token": 0.02,
                               "context_tokens": args.context_tokens})


def build_runtime(args) -> ServingRuntime:
    trace = load_trace(args.trace)
    types = fit_request_types(trace, args.types, 0)
    stats = types.stats(trace)
    name = served_name(args)
    cluster = model = cost = None
    if args.cluster:
        from oserve.costmodel.catalog import load_models, parse_cluster
        from oserve.costmodel.cost_model import CostModel
        from oserve.planner.api import make_plan

        if not args.model:
            raise ClientRequestError("--cluster needs --model (a catalog model name)")
        cluster, model = parse_cluster(args.cluster), load_models().get(args.model)
        cost = CostModel(model)
    if args.plan:
        plan = Plan.from_dict(json.loads(Path(args.plan).read_text()))
    elif cluster is not None:
        plan = make_plan(cluster, model, stats, args.planner, cost)
    else:
        plan = static_plan(name, [ReplicaConfig("cpu")] * args.replicas, types.names(),
                           type_rates_rps=[s.rate_rps for s in stats])
    spec = engine_spec(args, len(plan.replicas))
    factory = _engine_factory(args, spec, cost)
    replan = ReplanConfig(mix_threshold=args.replan_mix_threshold,
                          volume_ratio=args.replan_volume_ratio,
                          confirm_checks=args.replan_confirm_checks, cooldown_s=args.replan_cooldown_s)
    policy = None  # live re-planning needs the cluster and cost model to plan on
    if args.replan and cluster is not None:
        policy = control_policy(cluster, cost, stats, args.switch_policy, replan)
    config = RuntimeConfig(max_inflight_per_replica=args.max_inflight, window_s=args.window_s,
                           check_interval_s=args.check_interval_s, replan=replan,
                           dispatch_policy=args.dispatch_policy,
                           first_token_timeout_s=args.first_token_timeout_s,
                           token_timeout_s=args.token_timeout_s)
    return ServingRuntime(name, plan, factory, types.classify_online, policy, config)


def control_policy(cluster, cost, stats, switch_policy: str, replan: ReplanConfig) -> ControlPolicy:
    """The controller's policy: the cost-aware ``switching.policy.decide`` each check, behind the drift
    gate for ``reactive`` (whose cooldown is then the policy's minimum gap between switches). The
    measured rates are the forecast (the ``last`` baseline); the types' shapes are the trace's. Switches
    are priced as the server performs them: new replicas load their weights from storage (``reload``;
    no engine here receives weights from a peer GPU)."""
    from oserve.switching.links import LinkModel
    from oserve.switching.policy import SwitchContext, SwitchParams

    context = SwitchContext(cluster, cost, tuple(stats), LinkModel(cluster))
    if switch_policy == "reactive":
        params = SwitchParams(transfer_mode="reload", min_gap_s=replan.cooldown_s)
        return ControlPolicy(context, params, gate=replan, min_total_rps=replan.min_total_rps)
    return ControlPolicy(context, SwitchParams(transfer_mode="reload"),
                         min_total_rps=replan.min_total_rps)


def _engine_factory(args, spec: EngineSpec, cost):
    def spec_for(replica: Replica) -> EngineSpec:
        if spec.kind == "fake" and cost is not None:
            from oserve.runtime.fake_engine import fake_cost_from_model

            fc = fake_cost_from_model(cost, replica.config)
            return EngineSpec("fake", {**spec.options, "prefill_s_per_token": fc.prefill_s_per_token,
                                       "decode_s_per_token": fc.decode_s_per_token})
        return spec

    if not (args.ray or args.ray_address):
        return lambda replica: spec_for(replica).build(replica)
    from oserve.runtime.ray_engine import RayActorEngine, RayPlacement, connect

    connect(args.ray_address)
    placement = RayPlacement(use_gpus=spec.kind == "vllm", cpus_per_bundle=1.0)

    def factory(replica: Replica) -> Engine:
        return RayActorEngine(spec_for(replica), replica, placement)

    return factory


__all__ = ["build_runtime", "control_policy", "engine_spec", "served_name"]
