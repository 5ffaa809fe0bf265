"""Predicted SLO attainment of a disaggregated group: prefill pool, KV hand-off, decode pool in series.

A group of ``num_prefill`` prefill replicas and ``num_decode`` decode replicas serves types at rates
``l_t`` (spread evenly over each pool). Per load regime of the trace (as ``latency_model``):

* **Prefill pool**: a prefill replica's TTFT under queueing (``costmodel.prefill_latency``: FCFS prompts
  packed into steps of the chunk budget, a packed step priced by its tokens, Kingman's wait) must fit
  the type's TTFT bound less what follows the prefill: the KV hand-off's exposed time
  (``costmodel.kv_transfer``, the last chunk's pass overlapping the transfer) and the decode replica's
  first step (plus half the step in flight when the sequence joins).
* **Decode pool**: a decode replica runs decode-only steps, ``B = sum_t l_t O_t * d(B)`` by Little's law
  (each sequence gets a token per step), so TPOT is ``d(B, ctx)`` with no prefill interference, ``ctx``
  the output-weighted mean of ``I + O/2`` (what a decoding sequence holds, averaged over its steps, as in
  ``latency_model``); more sequences than ``max_num_seqs`` is an overload, and so are more than its KV
  cache holds (prompts included) when it lasts; in a burst regime (one window of replay time) the excess
  waits for KV blocks as a fluid backlog, added to the TTFT (the colocated model's rule).

A type's attainment is ``P(TTFT ok) * P(TPOT ok)`` (the pools are independent queues), the
request-weighted mean over regimes, as for a colocated replica.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oserve.costmodel.kv_transfer import KvHandoff
from oserve.costmodel.latency_model import (
    KV_FIT_SLACK,
    ReplicaLatencyModel,
    backlog_waits_s,
    kv_admitted_share,
    regime_duration_s,
)
from oserve.costmodel.prefill_latency import PrefillPoolModel
from oserve.workload.burstiness import Burstiness, LengthSample
from oserve.workload.slo import Slo


@dataclass(frozen=True)
class DecodePrediction:
    tpot_attainment: tuple[float, ...]  # per type
    batch: float
    step_s: float
    overloaded: bool
    growth: float = 0.0  # KV-bound burst: a sequence arriving t s into it waits growth * t for blocks


def predict_decode_only(model: ReplicaLatencyModel, samples: list[LengthSample], rates_rps: np.ndarray,
                        slos: list[Slo], duration_s: float = math.inf, ca2: float = 1.0) -> DecodePrediction:
    """TPOT attainment per type on a decode-only replica at constant rates lasting ``duration_s`` (a
    burst regime's window; infinite: stationary), arrivals clumped by ``ca2`` within it. More decoding
    sequences than the KV cache holds (with the colocated model's margin for the occupancy's
    fluctuation, ``ReplicaLatencyModel.kv_bound``) is an overload when it lasts; over a burst, as in
    ``latency_model``, the replica serves what its cache holds (the rates over ``1 + x``) and the excess
    waits for blocks as a fluid backlog (``growth`` x)."""
    k = len(samples)
    rates = np.asarray(rates_rps, dtype=float)
    if rates.sum() <= 0:
        return DecodePrediction((1.0,) * k, 0.0, 0.0, False)
    per = np.concatenate([np.full(len(s.input_tokens), rates[t] / len(s.input_tokens))
                          for t, s in enumerate(samples)])  # requests/s each sample stands for
    inp = np.concatenate([np.asarray(s.input_tokens, dtype=float) for s in samples])
    out = np.concatenate([np.asarray(s.output_tokens, dtype=float) for s in samples])
    out_rate = float((per * out).sum())
    # KV tokens per decoding sequence, time-averaged: output-weighted (Little's law on token-seconds, as
    # in ``latency_model``): a long prompt with a short answer holds its KV for a few steps only
    ctx = float((per * out * (inp + out / 2)).sum()) / max(out_rate, 1e-12)

    def solve(share: float) -> tuple[float, float]:
        """(batch, the sequences the KV cache holds) at ``share`` of the decode rate."""
        batch = _decode_batch(model, out_rate * share, ctx)
        if batch > model.max_seqs:
            return batch, math.inf
        return batch, model.kv_bound(per * share, inp, out, batch, ctx, model.decode_s(batch, ctx), ca2).seqs

    admitted, growth = 1.0, 0.0  # share of the decode rate the KV cache admits; backlog wait per second
    batch, kv_seqs = solve(1.0)
    if batch <= model.max_seqs and batch > kv_seqs and math.isfinite(duration_s):
        # a KV-bound burst: the largest share whose batch the cache holds, as the colocated replica's
        trials: dict[float, tuple[float, float]] = {}

        def holds(share: float) -> bool:
            b, seqs = trials[share] = solve(share)
            return b <= seqs

        admitted = kv_admitted_share(holds, kv_seqs / batch)  # from the linear estimate
        batch, kv_seqs = trials.get(admitted) or solve(admitted)
        growth = 1.0 / admitted - 1.0
    if batch > model.max_seqs or batch > kv_seqs * KV_FIT_SLACK:
        return DecodePrediction((0.0,) * k, batch, math.inf, True)
    d = model.decode_s(batch, ctx)
    att = tuple(float(np.mean((d <= slos[t].tpot_s) | (np.asarray(s.output_tokens) <= 1)))
                for t, s in enumerate(samples))
    return DecodePrediction(att, batch, d, False, growth)


def _decode_batch(model: ReplicaLatencyModel, out_rate: float, ctx: float) -> float:
    """Little's law on a decode-only replica: ``B = out_rate * d(B)`` (d grows slowly with B)."""
    batch = 1.0
    for _ in range(8):
        new = out_rate * model.decode_s(batch, ctx)
        done = abs(new - batch) <= 0.02 * max(batch, 1.0)
        batch = new
        if done or batch > model.max_seqs:
            break
    return batch


@dataclass
class GroupLatencyModel:
    """The prefill and decode replicas' latency models of a group, their counts and the hand-off."""

    prefill: ReplicaLatencyModel
    decode: ReplicaLatencyModel
    num_prefill: int
    num_decode: int
    handoff: KvHandoff
    pool: PrefillPoolModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pool = PrefillPoolModel(self.prefill)

    def attainment(self, samples: list[LengthSample], rates_rps: np.ndarray, slos: list[Slo],
                   burstiness: Burstiness | None, rate_scale: float,
                   stream_fraction: float) -> np.ndarray:
        """Per-type attainment of the group serving ``rates_rps`` (the trace's mean rates routed here,
        at replay speed ``rate_scale``); ``stream_fraction`` is the group's share of the arrivals."""
        return self._regimes(samples, rates_rps, slos, burstiness, rate_scale, stream_fraction)[0]

    def attainment_parts(self, samples: list[LengthSample], rates_rps: np.ndarray, slos: list[Slo],
                         burstiness: Burstiness | None, rate_scale: float,
                         stream_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-type (TTFT attainment, TPOT attainment), request-weighted over the regimes (an overloaded
        regime counts 0 in both): which pool binds."""
        _, ttft, tpot = self._regimes(samples, rates_rps, slos, burstiness, rate_scale, stream_fraction)
        return ttft, tpot

    def _regimes(self, samples: list[LengthSample], rates_rps: np.ndarray, slos: list[Slo],
                 burstiness: Burstiness | None, rate_scale: float,
                 stream_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rates = np.asarray(rates_rps, dtype=float)
        k = len(samples)
        burst = burstiness or Burstiness.poisson()
        regimes = burst.regimes(rate_scale)
        ca2 = burst.within_ca2(stream_fraction / self.num_prefill)
        dec_ca2 = burst.within_ca2(stream_fraction / self.num_decode)
        duration = regime_duration_s(burst, len(regimes))  # one window of replay time; one regime: stationary
        sums, den = np.zeros((3, k)), np.zeros(k)
        for reg in regimes:
            mult = np.asarray(reg.multipliers) if reg.multipliers else np.ones(k)
            r = rates * mult
            w = reg.time_share * r
            den += w
            dec = predict_decode_only(self.decode, samples, r / self.num_decode, slos, duration, dec_ca2)
            if dec.overloaded:
                continue
            # what follows the prefill comes off its TTFT bound (a bound used up: nothing meets it), and
            # in a KV-bound burst the wait for decode blocks, growth * t for a sequence t s into it
            after = np.array([slos[t].ttft_s - self._after_prefill_s(samples[t], dec.step_s)
                              for t in range(k)])
            waits = backlog_waits_s(duration, dec.growth) if dec.growth > 0 else np.zeros(1)
            preds = [self.pool.predict(samples, r / self.num_prefill, list(np.maximum(after - w, 1e-9)), ca2)
                     for w in waits]
            if preds[0].overloaded:
                continue
            ttft = np.mean([p.ttft_attainment for p in preds], axis=0)
            tpot = np.array(dec.tpot_attainment)
            sums += w * np.array([ttft * tpot, ttft, tpot])
        out = np.where(den > 0, sums / np.where(den > 0, den, 1.0), 1.0)
        return out[0], out[1], out[2]

    def _after_prefill_s(self, sample: LengthSample, decode_step_s: float) -> float:
        """The hand-off's exposed time for the type's mean prompt (its last chunk's pass overlapping the
        transfer) plus the decode replica's first step and, on average, half the step in flight when
        the sequence joins (the simulator's decode replica takes it at its next step boundary)."""
        prompt = int(round(sample.mean_input_tokens))
        budget = self.prefill.budget_tokens
        last = min(prompt, budget)
        last_pass_s = self.prefill.chunk_extra_s(last, prompt - last) + self.prefill.decode_s(1, 1)
        return self.handoff.exposed_s(prompt, last_pass_s) + 1.5 * decode_step_s


__all__ = ["DecodePrediction", "GroupLatencyModel", "predict_decode_only"]
