"""The command line imports only the subcommand it runs (start-up time is part of the planner's budget)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_plan_does_not_import_the_runtime_or_scipy_stats():
    code = ("import json, sys; from oserve.cli.main import build_parser; "
            "a = build_parser('plan').parse_args(['plan', '--model', 'llama-2-70b']); "
            "print(json.dumps([a.command, 'oserve.runtime.serving' in sys.modules, "
            "'scipy.stats' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=SRC))
    assert json.loads(out.stdout) == ["plan", False, False]


def test_every_command_still_registers_for_help():
    from oserve.cli.main import COMMANDS, build_parser

    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert set(choices) == set(COMMANDS)
    # a name that is not a command gets the full parser, hence argparse's own error
    full = build_parser("nosuch")
    assert set(next(a for a in full._actions if a.dest == "command").choices) == set(COMMANDS)
