"""``oserve`` command line: one subcommand per job; each lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import sys

from oserve import __version__
from oserve.cli import costmodel_cmd, plan_cmd
from oserve.common.errors import OServeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oserve", description="Workload-orchestrated LLM serving: plan, simulate and serve.")
    parser.add_argument("--version", action="version", version=f"oserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan_cmd.register(sub)
    costmodel_cmd.register(sub)
    _register_optional(sub)
    return parser


def _register_optional(sub) -> None:
    """Subcommands of later layers (simulator, forecasting, runtime) register themselves here."""
    import importlib

    for module in ("oserve.sim.cli", "oserve.sim.adaptive_cli", "oserve.forecast.cli", "oserve.runtime.cli",
                   "oserve.cli.guard_cmd"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # that layer is not part of this build
            raise
        mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OServeError as exc:
        print(f"oserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
