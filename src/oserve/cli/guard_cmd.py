"""``oserve guard calibrate`` and the guard's flags of ``oserve serve``.

``oserve guard calibrate --system-prompt FILE`` starts the same engines ``oserve serve`` would (same
engine flags), calibrates the leakage guard for each system prompt and stores the calibrations in the
cache ``oserve serve --guard-system-prompts`` reads, so that no request waits for a calibration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

from oserve.common.errors import InputFormatError


def add_guard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guard-config", default=None, metavar="FILE",
                   help="guard settings YAML (a default block and per-model blocks; docs/guard.md)")
    p.add_argument("--guard-alpha", type=float, default=None,
                   help="significance level: tolerated share of no-leak answers regenerated (0.05)")
    p.add_argument("--guard-calibration-dir", default=None, metavar="DIR",
                   help="calibration cache (default ~/.cache/oserve/guard)")


def add_guard_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guard-system-prompts", action="store_true",
                   help="check chat answers for system-prompt leakage and regenerate leaking ones "
                        "without the system prompt (PromptKeeper; docs/guard.md)")
    add_guard_args(p)


def with_guard(config, args, enabled: bool = True):
    """``config`` (a ``ServeConfig``) with the guard of the served model set from the guard flags."""
    from oserve.runtime.serve_setup import served_name

    guard = guard_config_from_args(args, served_name(config), enabled)
    return config.model_copy(update={"runtime": config.runtime.model_copy(update={"guard": guard})})


def guard_config_from_args(args, model: str, enabled: bool = True):
    """The ``GuardConfig`` of ``model`` from the guard flags; None when the guard is off."""
    from oserve.guard.config import GuardConfig, load_guard_config

    if not enabled:
        return None
    overrides = {}
    if args.guard_alpha is not None:
        overrides["alpha"] = args.guard_alpha
    if args.guard_calibration_dir is not None:
        overrides["calibration_dir"] = Path(args.guard_calibration_dir)
    if args.guard_config:
        return load_guard_config(args.guard_config, model, **overrides)
    from pydantic import ValidationError

    try:
        return GuardConfig(**overrides)
    except ValidationError as exc:
        from oserve.common.errors import ConfigError

        raise ConfigError(f"--guard-alpha: {exc.errors()[0]['msg']}") from None


def register(sub) -> None:
    from oserve.cli.serve_cmd import add_serve_args

    guard = sub.add_parser("guard", help="the system-prompt leakage guard")
    gsub = guard.add_subparsers(dest="guard_command", required=True, metavar="GUARD")
    c = gsub.add_parser("calibrate", help="calibrate the guard for system prompts ahead of serving",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--system-prompt", required=True, action="append", metavar="FILE",
                   help="a file holding one system prompt (repeat for several)")
    c.add_argument("--force", action="store_true", help="recalibrate even if a calibration is cached")
    c.add_argument("--json", action="store_true", help="print the calibrations as JSON")
    add_guard_args(c)
    add_serve_args(c)  # the engine flags of oserve serve
    c.set_defaults(func=run_calibrate)


def read_system_prompt(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputFormatError(path, None, None, f"cannot read the system prompt: {exc.strerror}") from None
    if not text.strip():
        raise InputFormatError(path, None, None, "the system prompt file is empty")
    return text.strip()


def run_calibrate(args) -> int:
    from oserve.cli.serve_cmd import LOG_FORMAT, serve_config
    from oserve.runtime.serve_setup import build_runtime

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    prompts = [(path, read_system_prompt(path)) for path in args.system_prompt]
    args.check_interval_s = 0.0  # no control loop: this process only calibrates
    serve = with_guard(serve_config(args), args)
    runtime = build_runtime(serve)
    summaries = asyncio.run(_calibrate_all(runtime, serve.runtime.guard, prompts, args.force))
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        for s in summaries:
            print(f"{s['file']}: {s['system_prompt_sha256'][:12]} -> {s['cache_file']}\n"
                  f"  {s['statistic']}: no-leak N({s['no_leak']['mean']:.3f}, {s['no_leak']['std']:.3f}) "
                  f"n={s['no_leak']['n']}   leak N({s['leak']['mean']:.3f}, {s['leak']['std']:.3f}) "
                  f"n={s['leak']['n']}\n"
                  f"  leak region {s['rejection_region']}  alpha {s['alpha']:g} (effective "
                  f"{s['effective_alpha']:.3f})  power {s['power']:.3f}  calibrated in "
                  f"{s['calibration_s']:.1f} s")
    return 0


async def _calibrate_all(runtime, config, prompts, force: bool) -> list[dict]:
    from oserve.runtime.guard_backend import CalibrationStore, RouterCalibrationBackend

    out = []
    async with runtime:
        store = CalibrationStore(runtime.model_name, config, RouterCalibrationBackend(runtime.router),
                                 runtime.metrics, concurrency=len(runtime.router.table.handles))
        for path, text in prompts:
            if force:
                store.cache.path_for(runtime.model_name, text).unlink(missing_ok=True)
            calibration = await store.get(text)
            out.append({"file": path, "cache_file": str(store.cache.path_for(runtime.model_name, text)),
                        **calibration.summary()})
    return out


__all__ = ["add_guard_args", "add_guard_serve_args", "guard_config_from_args", "register", "with_guard"]
