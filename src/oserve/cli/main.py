"""``oserve`` command line: one subcommand per job, each in its own module here with a ``register``.

All argparse code lives in this package; the commands turn flags into the typed configs of the layers
below and call them. Flag names are not abbreviated (``--drain`` is not ``--drain-s``), a bad flag value is
one line on stderr with exit code 2, and so is any ``OServeError`` a command raises.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from oserve import __version__
from oserve.common.errors import OServeError

# subcommand name -> its module; a command line naming one imports only that module (``serve`` pulls in
# the runtime, ``bench`` scipy.stats: a second of start-up that ``oserve plan`` does not need)
COMMANDS = {"plan": "plan_cmd", "simulate": "simulate_cmd", "simulate-adaptive": "simulate_adaptive_cmd",
            "transfer-plan": "transfer_plan_cmd", "costmodel": "costmodel_cmd", "forecast": "forecast_cmd",
            "serve": "serve_cmd", "bench": "bench_cmd", "guard": "guard_cmd"}


class Parser(argparse.ArgumentParser):
    """No prefix matching of long flags (a renamed flag must not silently match its successor), and a
    mistake is one line, not the usage block."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or (``command``, a known name) of that one alone."""
    parser = Parser(prog="oserve", description="Workload-orchestrated LLM serving: plan, simulate and serve.")
    parser.add_argument("--version", action="version", version=f"oserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(f"oserve.cli.{COMMANDS[name]}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
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
