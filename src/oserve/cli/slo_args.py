"""The SLO flags that ``oserve plan``, ``simulate``, ``simulate-adaptive`` and ``serve`` share, as one
self-contained block.

(``oserve bench`` keeps the plain ``--slo-ttft-s/--slo-tpot-s`` bounds of ``common_args.add_slo_args``;
the spellings and destinations here are the same.)"""

from __future__ import annotations

import argparse

from oserve.common.errors import ConfigError
from oserve.workload.slo import SLO_PRESETS, SloSpec, slo_from_flags

OBJECTIVES = ("goodput", "min-gpus", "throughput")


def add_slo_args(p: argparse.ArgumentParser, planning: bool = True) -> None:
    g = p.add_argument_group("service-level objectives")
    g.add_argument("--slo", default=None, metavar="PRESET|FILE",
                   help=f"SLO preset ({', '.join(f'{k}: {v.describe()}' for k, v in SLO_PRESETS.items())}) "
                        "or a YAML file with per-type / per-input-length SLOs")
    g.add_argument("--slo-ttft-s", "--slo-ttft", dest="slo_ttft_s", type=float, default=None, metavar="S",
                   help="time-to-first-token bound in seconds, queueing included (sets the default SLO)")
    g.add_argument("--slo-tpot-s", "--slo-tpot", dest="slo_tpot_s", type=float, default=None, metavar="S",
                   help="time-per-output-token bound in seconds (sets the default SLO)")
    g.add_argument("--attainment", type=float, default=None, metavar="FRAC",
                   help="share of each type's requests that must meet their SLO (default 0.9)")
    if planning:
        g.add_argument("--objective", default=None, choices=OBJECTIVES,
                       help="goodput (default with an SLO): the highest rate scale meeting the SLOs; "
                            "min-gpus: the fewest GPUs meeting them at the trace's rate; throughput "
                            "(default without): the max-flow capacity")
        g.add_argument("--verify-requests", type=int, default=None, metavar="N",
                       help="simulate the goodput shortlist on N requests around the trace's busiest "
                            "10 s and keep the best simulated plan (default: 250 per replica of the "
                            "largest shortlisted fleet, at least 1000; 0: analytical only)")
        g.add_argument("--disaggregation", default="off", choices=("on", "off"),
                       help="on: the oserve goodput planner also considers prefill/decode groups (KV "
                            "hand-off priced on the cluster's links); the best colocated plan stays in "
                            "the simulated shortlist, so a group is chosen only when it simulates better")


def slo_from_args(args: argparse.Namespace) -> SloSpec | None:
    """The SLO the flags ask for (None when no SLO flag was given); ConfigError on bad values."""
    return slo_from_flags(args.slo, args.slo_ttft_s, args.slo_tpot_s, args.attainment)


def disaggregation_from_args(args: argparse.Namespace) -> bool:
    return getattr(args, "disaggregation", "off") == "on"


def objective_from_args(args: argparse.Namespace, slo: SloSpec | None) -> str:
    """The planning objective: as given, else goodput with an SLO and throughput without."""
    objective = args.objective or ("goodput" if slo is not None else "throughput")
    if objective != "throughput" and slo is None:
        raise ConfigError(f"--objective {objective} needs an SLO: give --slo loose|tight|FILE or "
                          "--slo-ttft/--slo-tpot")
    if (getattr(args, "verify_requests", 0) or 0) < 0:
        raise ConfigError(f"--verify-requests must be >= 0, got {args.verify_requests}")
    return objective
