"""Parse command lines with LMDeploy's own ``lmdeploy`` CLI parser (run by an interpreter with LMDeploy).

Reads a JSON list of argument lists (what follows the ``lmdeploy`` executable) on stdin and prints, for
each, either the values oserve sets, as LMDeploy parsed them, or the parser's error; then builds the
``TurbomindEngineConfig`` that LMDeploy's ``api_server`` would build from them, so that values the parser
accepts but TurboMind refuses (an FP8 quant_policy) fail too. Imports nothing from oserve. LMDeploy's CLI
imports on a CPU-only machine when installed with ``pip install lmdeploy --no-deps`` plus the light
modules it imports (see docs/precision.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

FIELDS = ("model_path", "backend", "model_name", "server_name", "server_port", "tp", "model_format",
          "quant_policy", "dtype", "max_batch_size", "max_prefill_token_num", "session_len")


def parse_all(argvs: list[list[str]]) -> list[dict]:
    from lmdeploy.cli.cli import CLI
    from lmdeploy.cli.serve import SubCliServe
    from lmdeploy.messages import TurbomindEngineConfig

    SubCliServe.add_parsers()
    results = []
    for argv in argvs:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = CLI.parser.parse_args(argv)
            # api_server asks the GPU for a default batch size; there is no GPU here: its floor, 128
            TurbomindEngineConfig(dtype=args.dtype, tp=args.tp, max_batch_size=args.max_batch_size or 128,
                                  session_len=args.session_len, model_format=args.model_format,
                                  quant_policy=args.quant_policy,
                                  max_prefill_token_num=args.max_prefill_token_num)
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
