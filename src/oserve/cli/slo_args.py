"""The SLO flags that ``oserve plan`` and ``oserve simulate`` share, as one self-contained block."""

from __future__ import annotations

import argparse

from oserve.workload.slo import SLO_PRESETS, SloSpec, slo_from_flags


def add_slo_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service-level objectives")
    g.add_argument("--slo", default=None, metavar="PRESET|FILE",
                   help=f"SLO preset ({', '.join(f'{k}: {v.describe()}' for k, v in SLO_PRESETS.items())}) "
                        "or a YAML file with per-type / per-input-length SLOs")
    g.add_argument("--slo-ttft", type=float, default=None, metavar="S",
                   help="time-to-first-token bound in seconds, queueing included (sets the default SLO)")
    g.add_argument("--slo-tpot", type=float, default=None, metavar="S",
                   help="time-per-output-token bound in seconds (sets the default SLO)")
    g.add_argument("--attainment", type=float, default=None, metavar="FRAC",
                   help="share of each type's requests that must meet their SLO (default 0.9)")


def slo_from_args(args: argparse.Namespace) -> SloSpec | None:
    """The SLO the flags ask for (None when no SLO flag was given); ConfigError on bad values."""
    return slo_from_flags(args.slo, args.slo_ttft, args.slo_tpot, args.attainment)
