"""``oserve`` command line: one subcommand per job, each in its own module here with a ``register``.

All argparse code lives in this package; the commands turn flags into the typed configs of the layers
below and call them. Flag names are not abbreviated (``--drain`` is not ``--drain-s``), a bad flag value is
one line on stderr with exit code 2, and so is any ``OServeError`` a command raises.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from oserve import __version__
from oserve.cli import (
    bench_cmd,
    costmodel_cmd,
    forecast_cmd,
    plan_cmd,
    serve_cmd,
    simulate_adaptive_cmd,
    simulate_cmd,
    transfer_plan_cmd,
)
from oserve.common.errors import OServeError

COMMANDS = (plan_cmd, simulate_cmd, simulate_adaptive_cmd, transfer_plan_cmd, costmodel_cmd, forecast_cmd,
            serve_cmd, bench_cmd)


class Parser(argparse.ArgumentParser):
    """No prefix matching of long flags (a renamed flag must not silently match its successor), and a
    mistake is one line, not the usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="oserve", description="Workload-orchestrated LLM serving: plan, simulate and serve.")
    parser.add_argument("--version", action="version", version=f"oserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe (`oserve plan --json | head`) surfaces here
        return code
    except OServeError as exc:
        print(f"oserve: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away: stop quietly, and keep the interpreter's final flush from complaining
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a C tool killed by the signal reports
    except KeyboardInterrupt:
        print("oserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
