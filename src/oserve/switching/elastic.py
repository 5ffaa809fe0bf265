"""The elastic choice (objective ``min-gpus``): size the fleet to the forecast, release what it does not need.

Every candidate meets the attainment target at ``headroom`` x the forecast: the SLO planner's fewest-GPU
fleet (``GoodputPlanner.min_gpus``) and, for each configuration the current fleet runs, the fewest
replicas of it that do (``resized_fleets``: a resize in place, whose kept replicas serve on during the
switch, where another configuration restarts everything). Of those, ``choose`` takes the one with the
fewest GPUs (then the least loss) among the acceptable ones:

* when the current fleet misses the target at the padded forecast, a candidate is acceptable when
  switching pays in goodput (gain > (1 + hysteresis) x cost + min gain, as for the goodput objective) or
  it uses no more GPUs and loses little (below);
* when the current fleet meets it, only a smaller fleet, and only if the requests lost, while switching
  and after (``cost + max(0, g_cur - g_tgt) x horizon``), stay within ``max_loss_frac`` of those the
  current fleet would serve well over the horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oserve.costmodel.catalog import ClusterSpec
from oserve.planner.placement import gpus_by_type, pack
from oserve.planner.plan import Replica
from oserve.switching.goodput_price import GoodputPricer


@dataclass(frozen=True)
class ElasticOption:
    index: int  # of the candidate
    num_gpus: int
    gain_requests: float
    cost_requests: float
    good_rps_target: float


def resized_fleets(pricer: GoodputPricer, cluster: ClusterSpec, replicas: Sequence[Replica],
                   headroom: float) -> list[tuple[tuple[Replica, ...], np.ndarray]]:
    """Per configuration of ``replicas``: the fewest replicas of it that meet the target at ``headroom``
    x the forecast (evenly dispatched), packed on the cluster; none for a configuration that cannot."""
    out = []
    for cfg in sorted({r.config for r in replicas}):
        for n in range(1, gpus_by_type(cluster).get(cfg.gpu_type, 0) // cfg.num_gpus + 1):
            placed = pack({cfg: n}, cluster)
            if placed is None:
                break
            fleet = tuple(placed)
            even = np.full((pricer.workload.num_types, n), 1.0 / n)
            if pricer.meets(fleet, even, headroom):
                out.append((fleet, even))
                break
    return out


def choose(options: Sequence[ElasticOption], current_gpus: int, current_meets: bool, good_cur: float,
           horizon_s: float, hysteresis: float, min_gain_requests: float,
           max_loss_frac: float) -> tuple[ElasticOption | None, str]:
    """(the option to switch to, or None with why)."""
    allowance = max_loss_frac * good_cur * horizon_s + min_gain_requests
    ok = []
    for o in options:
        loss = o.cost_requests + max(0.0, good_cur - o.good_rps_target) * horizon_s
        small = o.num_gpus <= current_gpus and loss <= allowance
        if current_meets:
            if o.num_gpus < current_gpus and loss <= allowance:
                ok.append((o.num_gpus, loss, o))
        elif small or o.gain_requests - (1 + hysteresis) * o.cost_requests > min_gain_requests:
            ok.append((o.num_gpus, loss, o))
    if ok:
        return min(ok, key=lambda x: (x[0], x[1]))[2], ""
    if current_meets:
        return None, (f"fleet of {current_gpus} GPUs meets the target; no smaller one within the loss "
                      "allowance")
    return None, "fleet short of the target, but no candidate pays for its switch"


__all__ = ["ElasticOption", "choose", "resized_fleets"]
