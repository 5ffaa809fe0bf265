"""Parse command lines with vLLM's own ``vllm serve`` argument parser (run by an interpreter with vLLM).

Reads a JSON list of argument lists (what follows ``vllm serve`` or ``python -m
vllm.entrypoints.openai.api_server``) on stdin and prints, for each, either the parsed values oserve
sets or the parser's error. Imports nothing from oserve, so the vLLM environment needs no oserve.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

FIELDS = ("model", "model_tag", "served_model_name", "host", "port", "tensor_parallel_size",
          "pipeline_parallel_size", "dtype", "quantization", "enforce_eager", "max_model_len",
          "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_dtype",
          "kv_transfer_config")


def parse_all(argvs: list[list[str]]) -> list[dict]:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    results = []
    for argv in argvs:
        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parser.parse_args(argv)
            validate_parsed_serve_args(args)
        except SystemExit:
            results.append({"ok": False, "error": err.getvalue().strip().splitlines()[-1:]})
            continue
        except Exception as exc:  # noqa: BLE001 - reported back to the test
            results.append({"ok": False, "error": [f"{type(exc).__name__}: {exc}"]})
            continue
        results.append({"ok": True, "values": {f: getattr(args, f, None) for f in FIELDS}})
    return results


if __name__ == "__main__":
    json.dump(parse_all(json.load(sys.stdin)), sys.stdout, default=str)
