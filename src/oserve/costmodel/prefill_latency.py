"""Predicted TTFT of a prefill-only replica (the prefill side of a disaggregated group).

A prefill replica with chunk budget ``C`` (``pp`` times the engine's per-batch budget with PP, as in the
simulator) runs FCFS prompts packed into steps of up to ``C`` tokens, with no decodes beside them. The
colocated latency model (``costmodel.latency_model``) prices a prompt's queue work as the sum of what its
chunks add to a decode step (``m(c) = step(c + decodes) - step(decodes)``). That is right when a step
carries one chunk beside decodes that run anyway, but a prefill-only step packing ``n`` prompts pays
the weights once, not ``n`` times less: for Llama-2-70B on TP4 the cost model's step of 32 x 256
tokens takes 474 ms, the sum of the extras 199 ms (the measured per-layer prefill times in
``../shared/data/profiles/h100_layer_profile.csv`` are linear in tokens above 1,024: 0.68 ms per
1,024, 6.0 ms per 8,192 tokens per layer, so a packed step costs its tokens, not its chunks). That
underestimate is what made the group model predict 1.2-14x the simulated goodput.

Here a prompt of ``I`` tokens has two service times:

* **alone** ``a(I)``: its own chunk steps, ``sum_j step(c_j after j C cached)``, when it has the replica
  to itself;
* **packed** ``I f``: its share of full steps, ``f = step(C packed with prompts of the mean length) / C``
  seconds per token, when the queue is busy.

The queue is a G/G/1 server with work ``w(I) = (1 - rho) a(I) + rho I f`` (a fixed point in ``rho``, the
utilisation); Kingman's wait ``W`` with the exponential tail of ``costmodel.latency_model``, and TTFT is
``W + (1 - rho) a(I) + rho (I f + step(C) / 2)``: when packed, a prompt's last step also carries the
prompts behind it (half a full step on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oserve.costmodel.latency_model import MAX_UTILISATION, KingmanWait, ReplicaLatencyModel
from oserve.workload.burstiness import LengthSample

FIXED_POINT_ROUNDS = 6


@dataclass(frozen=True)
class PrefillPrediction:
    ttft_attainment: tuple[float, ...]  # per type
    utilisation: float
    overloaded: bool


@dataclass
class PrefillPoolModel:
    """The TTFT model of one prefill replica; step times memoised per instance."""

    replica: ReplicaLatencyModel
    _alone: dict[int, float] = field(default_factory=dict, repr=False)
    _full: dict[int, float] = field(default_factory=dict, repr=False)

    @property
    def budget_tokens(self) -> int:
        return self.replica.budget_tokens

    def alone_s(self, prompt_tokens: int) -> float:
        """``a(I)``: the prompt's own chunk steps on an otherwise idle replica."""
        t = self._alone.get(prompt_tokens)
        if t is None:
            c = self.budget_tokens
            cost, hw = self.replica.cost, self.replica.hw
            t = sum(float(cost.step_time_s(hw, ((min(c, prompt_tokens - j * c), j * c),)))
                    for j in range(max(1, math.ceil(prompt_tokens / c))))
            self._alone[prompt_tokens] = t
        return t

    def full_step_s(self, mean_prompt_tokens: float) -> float:
        """One step packed to the budget with prompts of the mean length (their chunks, no cache)."""
        c = self.budget_tokens
        piece = int(max(1, min(c, round(mean_prompt_tokens))))
        key = piece if piece < 16 else int(2 ** (round(math.log2(piece) * 16) / 16))  # ~4% grid
        t = self._full.get(key)
        if t is None:
            n, rest = divmod(c, key)
            chunks = ((float(key), 0.0),) * n + (((float(rest), 0.0),) if rest else ())
            t = self._full[key] = float(self.replica.cost.step_time_s(self.replica.hw, chunks))
        return t

    def predict(self, samples: list[LengthSample], rates_rps: np.ndarray, ttft_bounds_s: list[float],
                ca2: float = 1.0) -> PrefillPrediction:
        """Per-type P(TTFT <= bound) at constant rates (``ca2``: the arrivals' squared coefficient of
        variation); overloaded (all 0) at utilisation ``MAX_UTILISATION`` or more."""
        rates = np.asarray(rates_rps, dtype=float)
        k = len(samples)
        if rates.sum() <= 0:
            return PrefillPrediction((1.0,) * k, 0.0, False)
        typ = np.concatenate([np.full(len(s.input_tokens), t) for t, s in enumerate(samples)])
        inp = np.concatenate([np.asarray(s.input_tokens, dtype=float) for s in samples])
        count = np.bincount(typ, minlength=k).astype(float)
        per = rates[typ] / count[typ]  # requests/s each sample stands for
        total = float(per.sum())
        alone = np.array([self.alone_s(int(i)) for i in inp])
        full_s = self.full_step_s(float((per * inp).sum()) / total)
        packed = inp * full_s / self.budget_tokens
        rho = float((per * packed).sum())
        for _ in range(FIXED_POINT_ROUNDS):  # w depends on rho, rho on w
            rho = min(float((per * ((1 - rho) * alone + rho * packed)).sum()), 1.0)
        if rho >= MAX_UTILISATION:
            return PrefillPrediction((0.0,) * k, rho, True)
        work = (1 - rho) * alone + rho * packed
        mean_w = rho / total
        cs2 = float((per * (work - mean_w) ** 2).sum()) / total / max(mean_w * mean_w, 1e-18)
        own = (1 - rho) * alone + rho * (packed + 0.5 * full_s)
        bounds = np.asarray(ttft_bounds_s, dtype=float)[typ]
        ok = KingmanWait(rho, mean_w, cs2, ca2).attainment(bounds - own)
        att = np.bincount(typ, ok, k) / np.maximum(count, 1)
        return PrefillPrediction(tuple(float(a) if rates[t] > 0 else 1.0 for t, a in enumerate(att)),
                                 rho, False)


__all__ = ["PrefillPoolModel", "PrefillPrediction"]
