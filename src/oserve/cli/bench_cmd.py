"""``oserve bench serve``: replay a trace against an OpenAI-compatible server (the load generator)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from oserve.cli.common_args import POSITIVE, POSITIVE_INT, add_slo_args


def register(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks against running servers")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    b = bsub.add_parser("serve", help="replay a trace against an OpenAI-compatible server")
    add_bench_args(b)
    b.set_defaults(func=run_bench_serve)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """Flags left out take ``BenchConfig``'s defaults (not imported here: it needs the serve extra)."""
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--rate-scale", type=POSITIVE, default=None)
    p.add_argument("--served-model-name", dest="model", default=None,
                   help="the model name to ask the server for (default: the server's first model)")
    p.add_argument("--max-requests", type=POSITIVE_INT, default=None)
    p.add_argument("--max-duration-s", type=POSITIVE, default=None)
    p.add_argument("--max-input-tokens", type=POSITIVE_INT, default=None)
    p.add_argument("--max-output-tokens", type=POSITIVE_INT, default=None)
    p.add_argument("--endpoint", default=None, choices=("completions", "chat"))
    p.add_argument("--types", dest="num_types", type=POSITIVE_INT, default=None,
                   help="report latencies per request type, typed as `oserve serve --types` does")
    add_slo_args(p)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON report here")
    p.add_argument("--records", default=None, metavar="FILE",
                   help="write one CSV row per request here (sent time, status, TTFT, end-to-end latency)")
    p.add_argument("--concurrency", type=POSITIVE_INT, default=None, metavar="N",
                   help="closed loop: keep N requests in flight (ignores the trace's arrival times)")


def run_bench_serve(args) -> int:
    from oserve.runtime.loadgen import BenchConfig, run_bench
    from oserve.workload import load_trace

    given = {k: getattr(args, k) for k in ("model", "rate_scale", "max_requests", "max_duration_s",
                                          "max_input_tokens", "max_output_tokens", "endpoint",
                                          "num_types", "slo_ttft_s", "slo_tpot_s", "concurrency")}
    config = BenchConfig(url=args.url, allow_remote=args.allow_remote,
                         **{k: v for k, v in given.items() if v is not None})
    report = asyncio.run(run_bench(config, load_trace(args.trace)))
    print(report.to_json() if args.json else report.to_text())
    if args.out:
        Path(args.out).write_text(report.to_json())
    if args.records:
        report.write_records(args.records)
    return 0 if report.num_ok else 1
