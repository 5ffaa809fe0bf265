"""From a typed ``ServeConfig`` (what ``oserve serve`` was asked for) to a ready-to-start ``ServingRuntime``:
request types, plan, engines, control policy."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from oserve.common.errors import ConfigError
from oserve.common.validation import one_of
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.precision import KV_FORMATS
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.setup import CostModelConfig
from oserve.costmodel.slo_capacity import SloWorkload
from oserve.planner.api import PLANNERS, make_plan
from oserve.planner.plan import Plan, Replica
from oserve.planner.spill_rule import PlanSpillRules, trace_type_slos
from oserve.runtime.clock import Clock
from oserve.runtime.controller import EngineFactory
from oserve.runtime.cpu_pinning import allowed_cpus
from oserve.runtime.embedded_model import EMBEDDED_MODEL_NAME
from oserve.runtime.engine import Engine
from oserve.runtime.engine_spec import ENGINE_KINDS, PROCESS_KINDS, EngineSpec
from oserve.runtime.lmdeploy_setup import LmdeployServeConfig, lmdeploy_engine_spec
from oserve.runtime.serving import RuntimeConfig, ServingRuntime
from oserve.runtime.static_plan import static_plan
from oserve.runtime.vllm_setup import VllmServeConfig, vllm_engine_spec
from oserve.switching.control import ControlPolicy
from oserve.switching.policy import POLICY_OBJECTIVES
from oserve.switching.replan_gate import ReplanConfig
from oserve.workload import fit_request_types
from oserve.workload.request_types import RequestTypes
from oserve.workload.slo import SLO_PRESETS, SloSpec, slo_from_flags

logger = logging.getLogger(__name__)

SWITCH_POLICIES = ("reactive", "cost-aware")


class ServeConfig(BaseModel):
    """Everything ``build_runtime`` needs; the CLI builds it from flags, tests build it directly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Annotated[str, AfterValidator(one_of(ENGINE_KINDS))] = "embedded"
    replicas: int = Field(1, ge=1, description="replicas when there is no cluster and no plan file")
    served_model_name: str | None = None
    model_path: str | None = None  # GGUF file for engine llama
    hf_model: str | None = None  # weights for engine vllm (default: the embedded SmolLM2, converted)
    remote_url: str | None = None
    remote_model: str | None = None
    context_tokens: int = Field(2048, ge=1)
    threads: int | None = Field(None, ge=1, description="CPU threads per embedded or vLLM-CPU replica")
    trace: str = "azure-conv"  # defines the request types
    types: int = Field(4, ge=1)
    cost_model: CostModelConfig | None = None  # plan for this cluster and model (the --cluster path)
    planner: Annotated[str, AfterValidator(one_of(PLANNERS))] = "oserve"
    plan_file: str | None = None
    replan: bool = False
    switch_policy: Annotated[str, AfterValidator(one_of(SWITCH_POLICIES))] = "reactive"
    # what the live loop optimises: goodput (fixed fleet) or min-gpus (elastic: GPUs not in the plan freed)
    objective: Annotated[str, AfterValidator(one_of(POLICY_OBJECTIVES))] = "goodput"
    ray: bool = False
    ray_address: str | None = None
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    vllm: VllmServeConfig = Field(default_factory=VllmServeConfig)  # engine vllm's own settings
    lmdeploy: LmdeployServeConfig = Field(default_factory=LmdeployServeConfig)  # engine lmdeploy's
    # KV cache of the replicas of a fleet without a plan (embedded/llama: llama.cpp's f16/q8_0/q4_0);
    # a plan sets each replica's own
    kv_cache_dtype: Annotated[str, AfterValidator(one_of(KV_FORMATS))] = "bf16"
    # the SLO (--slo preset or YAML file, --slo-ttft-s/--slo-tpot-s, --attainment): what the slo-spill
    # dispatch holds each type to and what live re-planning prices goodput on (None: no SLO given)
    slo: str | None = None
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    attainment: float | None = None




    @property
    def uses_ray(self) -> bool:
        return self.ray or self.ray_address is not None


def served_name(config: ServeConfig) -> str:
    if config.served_model_name:
        return config.served_model_name
    if config.engine == "embedded" or (config.engine == "vllm" and not config.hf_model):
        return EMBEDDED_MODEL_NAME
    model = config.cost_model.model if config.cost_model else None
    return config.remote_model or config.hf_model or model or "oserve-fake"


def engine_spec(config: ServeConfig, num_replicas: int) -> EngineSpec:
    if config.engine in ("embedded", "llama"):
        # leave one core to the gateway: llama.cpp threads that share a core spin and slow down a lot
        threads = config.threads or max(1, (len(allowed_cpus()) - 1) // max(1, num_replicas))
        options: dict = {"context_tokens": config.context_tokens, "num_threads": threads}
        if config.engine == "llama":
            if not config.model_path:
                raise ConfigError("--engine llama needs --model-path FILE.gguf")
            options["model_path"] = config.model_path
        return EngineSpec(config.engine, options)
    if config.engine == "remote":
        if not (config.remote_url and config.remote_model):
            raise ConfigError("--engine remote needs --remote-url and --remote-model")
        return EngineSpec("remote", {"url": config.remote_url, "model": config.remote_model,
                                     "context_tokens": config.context_tokens})
    if config.engine == "vllm":
        return vllm_engine_spec(config.vllm, config.hf_model, served_name(config),
                                on_cpu=config.cost_model is None and not config.plan_file,
                                num_replicas=num_replicas, threads=config.threads,
                                context_tokens=config.context_tokens)
    if config.engine == "lmdeploy":
        return lmdeploy_engine_spec(config.lmdeploy, config.hf_model, served_name(config),
                                    planned=config.cost_model is not None or bool(config.plan_file),
                                    context_tokens=config.context_tokens)
    return EngineSpec("fake", {"prefill_s_per_token": 1e-4, "decode_s_per_token": 0.02,
                               "context_tokens": config.context_tokens})


def build_runtime(config: ServeConfig, clock: Clock | None = None,
                  engine_factory: EngineFactory | None = None) -> ServingRuntime:
    """The runtime ``config`` asks for, on ``clock`` (wall time by default). ``engine_factory`` replaces
    the engines the config names (a harness's test doubles); plan, types and policy stay the config's.
    ``config.trace`` is any trace spec of ``--trace`` (a file, a built-in, ``stitch:``/``real-drift:``,
    ``synthetic-diurnal``, ``phases:``)."""
    from oserve.forecast.synthetic import load_any_trace

    check_kv_cache_dtype(config)
    trace = load_any_trace(config.trace)
    types = fit_request_types(trace, config.types, 0)
    stats = types.stats(trace)
    name = served_name(config)
    cluster = model = cost = None
    if config.cost_model is not None:
        # the same resolution as `oserve plan`: catalogs, calibration file, TPOT bound
        cluster, model, cost = config.cost_model.resolve()
    if config.plan_file:
        plan = Plan.load(config.plan_file)
        if len(plan.type_names) != types.k:
            raise ConfigError(f"plan '{config.plan_file}' has {len(plan.type_names)} request types, the "
                              f"trace '{config.trace}' was typed into {types.k} (use --types)")
    elif cluster is not None and model is not None and cost is not None:
        plan = make_plan(cluster, model, stats, config.planner, cost)
    else:
        fleet = ReplicaConfig("cpu", kv_cache_dtype=config.kv_cache_dtype)
        plan = static_plan(name, [fleet] * config.replicas, types.names(),
                           type_rates_rps=[s.rate_rps for s in stats])
    slo = slo_from_flags(config.slo, config.slo_ttft_s, config.slo_tpot_s, config.attainment)
    spill = spill_rules(config, slo, types, trace.input_tokens, cost, plan)
    spec = engine_spec(config, len(plan.replicas))
    timing = cost
    if timing is None and config.plan_file and config.engine == "fake":
        timing = plan_cost_model(plan)  # fake replicas timed as the plan's model on their configuration
    factory = engine_factory or _engine_factory(config, spec, timing, plan)
    policy = None  # live re-planning needs the cluster and cost model to plan on
    if config.replan and cluster is not None and cost is not None:
        from oserve.planner.slo_planner import slo_workload

        # the policy prices switches in SLO goodput: the trace's lengths and burstiness, at the SLO
        # given (else the loose preset)
        workload = slo_workload(trace, types, stats, slo or SloSpec(SLO_PRESETS["loose"]))
        policy = control_policy(cluster, cost, stats, config.switch_policy, config.runtime.replan,
                                workload, config.objective)
    return ServingRuntime(name, plan, factory, types.classify_online, policy, config.runtime, clock,
                          spill_rule=spill)


def plan_cost_model(plan: Plan) -> CostModel | None:
    """The cost model of the catalog model a plan file names (the shipped calibration), for a server
    given ``--plan`` without ``--cluster/--model``; None, with a warning, when the catalog lacks it."""
    try:
        return CostModelConfig(model=plan.model).resolve()[2]
    except ConfigError as exc:
        logger.warning("plan model '%s' has no cost model (%s): fake replicas keep the default timing",
                       plan.model, exc)
        return None


def spill_rules(config: ServeConfig, slo: SloSpec | None, types: RequestTypes, input_tokens,
                cost: CostModel | None, plan: Plan) -> PlanSpillRules | None:
    """The ``slo-spill`` dispatch's rule builder (None for the other policies): the same rule as the
    simulator's (``planner.spill_rule``), each type held to its SLO on the trace and each replica's step
    times from the cost model: ``--cluster/--model``'s, else the catalog model the plan file names."""
    if config.runtime.dispatch_policy != "slo-spill":
        return None
    if slo is None:
        raise ConfigError("--dispatch-policy slo-spill needs an SLO: give --slo loose|tight|FILE or "
                          "--slo-ttft/--slo-tpot")
    if cost is None:
        if not config.plan_file:
            raise ConfigError("--dispatch-policy slo-spill predicts each replica's step times with the "
                              "cost model: give --cluster and --model, or --plan FILE")
        cost = plan_cost_model(plan)
        if cost is None:
            raise ConfigError(f"--dispatch-policy slo-spill: the plan's model '{plan.model}' is not in the "
                              "model catalog; give --cluster and --model (with --models FILE)")
    for cfg in plan.configs():
        if not cost.fits(cfg):
            raise ConfigError(f"--dispatch-policy slo-spill: replica {cfg.label()} of the plan cannot hold "
                              f"{cost.model.name} (the cost model the rule predicts with)")
    return PlanSpillRules(cost, trace_type_slos(types, input_tokens, slo))


def check_kv_cache_dtype(config: ServeConfig) -> None:
    """``--kv-cache-dtype`` sets the llama.cpp replicas of a fleet without a plan; anything else is an
    error naming why (a plan carries each replica's format; other engines take it from the plan)."""
    if config.kv_cache_dtype == "bf16":
        return
    if config.plan_file or config.cost_model is not None:
        raise ConfigError("--kv-cache-dtype is for a fleet without a plan: with --plan or --cluster each "
                          "replica's kv_cache_dtype comes from the plan (oserve plan --kv-formats)")
    if config.engine not in ("embedded", "llama"):
        raise ConfigError(f"--kv-cache-dtype sets the llama.cpp cache of --engine embedded or llama, "
                          f"not of --engine {config.engine}")


def control_policy(cluster, cost, stats, switch_policy: str, replan: ReplanConfig,
                   slo: SloWorkload | None = None, objective: str = "goodput") -> ControlPolicy:
    """The controller's policy: the cost-aware ``switching.policy.decide`` each check, behind the drift
    gate for ``reactive`` (whose cooldown is then the policy's minimum gap between switches). The
    measured rates are the forecast (the ``last`` baseline); the types' shapes are the trace's. Switches
    are priced as the server performs them: new replicas load their weights from storage (``reload``;
    no engine here receives weights from a peer GPU); a change of engine settings alone restarts the
    replica in place. ``slo`` is the workload the policy prices goodput on (None: the types' mean and
    90th-percentile lengths under the loose preset); ``objective`` min-gpus sizes the fleet to the
    measured traffic (elastic). ``--planner`` chooses the initial plan only."""
    from oserve.switching.links import LinkModel
    from oserve.switching.policy import SwitchContext, SwitchParams

    context = SwitchContext(cluster, cost, tuple(stats), LinkModel(cluster), slo=slo)
    if switch_policy == "reactive":
        params = SwitchParams(transfer_mode="reload", min_gap_s=replan.cooldown_s, objective=objective)
        return ControlPolicy(context, params, gate=replan, min_total_rps=replan.min_total_rps)
    # a cooldown given (--replan-cooldown-s) is the policy's minimum gap; else the policy's own default
    params = SwitchParams(transfer_mode="reload", objective=objective)
    if "cooldown_s" in replan.model_fields_set:
        params = dataclasses.replace(params, min_gap_s=replan.cooldown_s)
    return ControlPolicy(context, params, min_total_rps=replan.min_total_rps)


def _engine_factory(config: ServeConfig, spec: EngineSpec, cost, plan: Plan):
    def spec_for(replica: Replica) -> EngineSpec:
        if spec.kind == "fake" and cost is not None:
            from oserve.runtime.fake_engine import fake_cost_from_model

            fc = fake_cost_from_model(cost, replica.config)
            return EngineSpec("fake", {**spec.options, "prefill_s_per_token": fc.prefill_s_per_token,
                                       "decode_s_per_token": fc.decode_s_per_token})
        return spec

    if not config.uses_ray:
        return lambda replica: spec_for(replica).build(replica)
    from oserve.runtime.ray_engine import RayActorEngine, RayPlacement, check_placement, connect

    connect(config.ray_address)
    placement = RayPlacement(use_gpus=spec.kind in PROCESS_KINDS, cpus_per_bundle=1.0)
    check_placement(plan.replicas, placement)  # before the port is bound: fail in seconds, with why

    def factory(replica: Replica) -> Engine:
        return RayActorEngine(spec_for(replica), replica, placement)

    return factory


__all__ = ["SWITCH_POLICIES", "ServeConfig", "build_runtime", "check_kv_cache_dtype", "control_policy",
           "engine_spec", "served_name", "spill_rules"]
