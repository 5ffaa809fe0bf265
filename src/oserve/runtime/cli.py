"""``oserve serve`` (the OpenAI-compatible server) and ``oserve bench serve`` (the load generator).

Registered by ``oserve.cli.main`` through ``register(sub)``; heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

from oserve.runtime.engine_spec import ENGINE_KINDS

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API (embedded CPU model by default)")
    add_serve_args(p)
    from oserve.cli.guard_cmd import add_guard_serve_args  # the leakage guard's flags (docs/guard.md)

    add_guard_serve_args(p)
    p.set_defaults(func=run_serve)
    bench = sub.add_parser("bench", help="benchmarks against running servers")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    b = bsub.add_parser("serve", help="replay a trace against an OpenAI-compatible server")
    add_bench_args(b)
    b.set_defaults(func=run_bench_serve)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="embedded", choices=ENGINE_KINDS,
                   help="embedded: SmolLM2-135M-Instruct on CPU (llama.cpp); fake: timed stand-in; "
                        "remote: an OpenAI server at --remote-url; vllm: vllm serve per replica")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--replicas", type=int, default=1, help="replicas when no --cluster/--plan is given")
    p.add_argument("--served-model-name", default=None, help="the model name clients ask for")
    p.add_argument("--model-path", default=None, help="GGUF file for --engine llama")
    p.add_argument("--hf-model", default=None, help="weights for --engine vllm (id or path)")
    p.add_argument("--remote-url", default=None, help="base URL for --engine remote")
    p.add_argument("--remote-model", default=None, help="model name at --remote-url")
    p.add_argument("--context-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per embedded replica")
    p.add_argument("--trace", default="azure-conv", help="trace that defines the request types")
    p.add_argument("--types", type=int, default=4, help="number of request types")
    p.add_argument("--cluster", default=None, help="GPU cluster to plan for (e.g. 1x8xH100)")
    p.add_argument("--model", default=None, help="catalog model the plan is made for (with --cluster)")
    p.add_argument("--planner", default="oserve")
    p.add_argument("--plan", default=None, metavar="FILE", help="a plan JSON (oserve plan --json)")
    p.add_argument("--replan", action="store_true", help="re-plan live as the traffic mix drifts")
    p.add_argument("--switch-policy", default="reactive", choices=("reactive", "cost-aware"),
                   help="reactive: re-plan on persistent drift (--replan-* knobs); cost-aware: "
                        "oserve.switching's policy, switching only when the gain pays for the switch")
    p.add_argument("--window-s", type=float, default=60.0, help="rate measurement window")
    p.add_argument("--check-interval-s", type=float, default=10.0, help="health/re-plan check period")
    p.add_argument("--replan-mix-threshold", type=float, default=0.15,
                   help="mix drift (total-variation distance) that calls for a new plan")
    p.add_argument("--replan-volume-ratio", type=float, default=1.5,
                   help="total-rate change (x or /) that calls for a new plan")
    p.add_argument("--replan-confirm-checks", type=int, default=3,
                   help="consecutive drifted checks before re-planning")
    p.add_argument("--replan-cooldown-s", type=float, default=120.0, help="minimum time between switches")
    p.add_argument("--max-inflight", type=int, default=64, help="queue bound per replica (then 429)")
    p.add_argument("--dispatch-policy", default="least-outstanding",
                   choices=("least-outstanding", "spillover", "weighted-random", "round-robin"),
                   help="per-request choice among the plan's replicas (the planner's shared policies)")
    p.add_argument("--first-token-timeout-s", type=float, default=600.0,
                   help="a replica silent this long (queueing included) is retired, the request retried")
    p.add_argument("--token-timeout-s", type=float, default=120.0,
                   help="a stream stalled this long fails with an explicit error")
    p.add_argument("--ray", action="store_true", help="run replicas as Ray actors (local Ray)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (implies --ray)")
    p.add_argument("--log-level", default="info")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--rate-scale", type=float, default=1.0)
    p.add_argument("--model", default=None, help="default: the server's first model")
    p.add_argument("--max-requests", type=int, default=200)
    p.add_argument("--max-duration-s", type=float, default=120.0)
    p.add_argument("--max-input-tokens", type=int, default=1024)
    p.add_argument("--max-output-tokens", type=int, default=256)
    p.add_argument("--endpoint", default="completions", choices=("completions", "chat"))
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON report here")


def run_bench_serve(args) -> int:
    from oserve.runtime.loadgen import BenchConfig, run_bench
    from oserve.workload import load_trace

    config = BenchConfig(url=args.url, model=args.model, rate_scale=args.rate_scale,
                         max_requests=args.max_requests, max_duration_s=args.max_duration_s,
                         max_input_tokens=args.max_input_tokens,
                         max_output_tokens=args.max_output_tokens, endpoint=args.endpoint,
                         allow_remote=args.allow_remote)
    report = asyncio.run(run_bench(config, load_trace(args.trace)))
    print(report.to_json() if args.json else report.to_text())
    if args.out:
        Path(args.out).write_text(report.to_json())
    return 0 if report.num_ok else 1


def run_serve(args) -> int:
    from oserve.runtime.server import bind_socket, serve_sockets
    from oserve.runtime.serve_setup import build_runtime

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    from oserve.cli.guard_cmd import guard_config_from_args
    from oserve.runtime.serve_setup import served_name

    runtime = build_runtime(args, guard_config_from_args(args, served_name(args),
                                                         args.guard_system_prompts))
    from oserve.runtime.gateway.app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("oserve.runtime").warning(
            "listening on %s: /admin/plan and /metrics are reachable by anyone who can reach this "
            "address; there is no authentication", args.host)
    sock = bind_socket(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(usage_banner(url, runtime.model_name), flush=True)
    try:
        serve_sockets(create_app(runtime), sock, args.log_level)
    finally:
        if args.ray or args.ray_address:
            from oserve.runtime.ray_engine import disconnect

            disconnect()
    return 0


def usage_banner(url: str, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello."}]})
    return "\n".join([
        f"oserve: serving {model} at {url}/v1", "",
        "  curl:",
        f"    curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'", "",
        "  python (pip install openai):",
        "    from openai import OpenAI",
        f"    client = OpenAI(base_url='{url}/v1', api_key='unused')",
        f"    print(client.chat.completions.create(model='{model}', "
        "messages=[{'role': 'user', 'content': 'Say hello.'}]).choices[0].message.content)", "",
        f"  metrics: {url}/metrics   plan: {url}/admin/plan   health: {url}/health", ""])


__all__ = ["register", "usage_banner"]
