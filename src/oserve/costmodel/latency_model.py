"""Latency-aware capacity: predicted TTFT and TPOT attainment of the request types on one replica.

One replica (a hardware split with its engine settings: chunk budget ``C``, ``max_num_seqs``) serves
types t at rates ``l_t`` (the co-located mix). Each type comes with equal-weight (input, output) length
samples and an SLO; the arrival stream with its measured index of dispersion (burstiness). vLLM's
chunked-prefill scheduler runs every decoding sequence first (one token each) and fills the rest of the
budget, ``C' = C - B``, with prompt chunks in arrival order. The model, all from the cost model's step
times ``d(B)`` (a decode-only step of B sequences) and ``m(c, p, B)`` (what a chunk of c prompt tokens
after p cached ones adds to such a step):

1. **Decode and interleaved prefill.** A prompt of I tokens is ``ceil(I / C')`` chunks. Per second the
   replica spends ``M = sum_t l_t E_t[sum of its chunks' m]`` on prefill, so steps take on average
   ``d / (1 - M)`` and a running sequence gets a token per step; Little's law gives the batch
   ``B = sum_t l_t O_t * d / (1 - M)``, solved by fixed-point iteration. A decoding sequence holds its
   context, ``I + O/2`` on average over its ``O`` steps, so the KV cache holds on average
   ``sum_t l_t O_t (I_t + O_t/2) * step`` tokens (Little's law on token-seconds): the context per
   decoding sequence is the *output-weighted* mean of ``I + O/2`` (a long prompt with a short answer
   holds its KV only briefly). ``M >= 1`` or more sequences than ``max_num_seqs``: the replica is
   overloaded (attainment 0).
   **KV fluctuation.** The tokens held fluctuate around that mean: the decoding sequences are an
   M/G/inf population, so by Campbell's theorem the variance is ``sum_t l_t E_t[tau (O I^2 + I O^2 +
   O^3/3)]`` over the length samples (each sequence's held tokens squared, integrated over its life),
   times the arrivals' clumping ``c_a^2`` and amplified by ``1 / (1 - e)``, ``e`` the decode step's
   elasticity in the tokens held (a fuller cache slows every step and so lengthens every life). The
   cache holds the stream (``B_kv``, sequences at the mean context) when the occupancy, a compound
   Poisson sum approximated as a Poisson count of equivalent sequences (``var / mean`` tokens each), is
   over ``KV_HEADROOM`` of the cache at most ``KV_OVERFLOW`` of the time (the normal tail at ``KV_Z = 2``
   sd: an overflow preempts, and frequent ones cascade). In a large population that is mean + 2 sd.
   **KV-bound regimes.** More decoding sequences than the KV cache holds (``B > B_kv``) is an overload
   of the decode rate by ``x = B / B_kv - 1``. In a stationary stream it never ends (attainment 0); a
   burst regime lasts its window (``duration_s``, 10 s), and the scheduler, as vLLM's (and the
   simulator's), keeps the excess prompts waiting for KV blocks rather than dropping them: the replica
   serves the admitted stream, the rates over ``1 + x`` (the largest share whose batch the cache holds
   with the same margin, by bisection: ``kv_admitted_share``), and the
   backlog grows as a fluid, so a request arriving ``t`` seconds into the window waits ``x t`` more
   before its prefill (averaged over ``t`` uniform in the window; the drain after the window is not
   charged to the next one).
2. **TPOT** (a request's mean time per output token after the first) is ``d + S / (O - 1)``: S is the
   extra time of the chunk steps among its ``O - 1`` decode steps. A step carries a chunk with
   probability ``q = n_chunks_per_s * d / (1 - M)``; the number of chunk steps is Binomial(O - 1, q) and
   each adds an ``m`` drawn from the chunk mix. Exact for zero or one chunk step (the empirical chunk
   costs), a normal approximation for more. So one 8192-token chunk in a short answer shows up in the
   tail, not only in the mean. A request that decodes inside a busy period of the prompt queue gets a
   full chunk at *every* step: with probability ``rho (1 - 1/L)^(O-1)``, L the busy period in steps
   (chunks per prompt / (1 - rho), times Kingman's variability factor), its TPOT is ``d + m(C')``.
3. **TTFT** (queueing counts) is ``W + s(I) + r``: ``s(I)`` the request's own chunk steps
   (``sum (d + m)``), ``r`` half a step in flight, and ``W`` the wait in the FCFS prompt queue. The queue
   is a G/G/1 server whose work per request is its prefill time with steps shared at full chunks
   (``m + d * I / C'``), utilisation ``rho``; Kingman's mean ``W = rho/(1-rho) * (1 + c_s^2)/2 * E[w]``
   (``c_a^2``: the clumping of arrivals *within* a regime, below; ``c_s^2``: the work's variability),
   with an exponential tail and an atom at zero, ``P(W > x) = rho exp(-rho x / W)`` (exact for M/M/1).
   When the queue is busy, chunks pack to the full budget: a chunk step carries ``C'`` tokens with
   probability ``rho`` and one prompt's chunk otherwise, which sets how many steps carry a chunk.
4. **Bursts.** The trace's measured load regimes (``oserve.workload.burstiness``: 10-second windows
   grouped by prompt-token load, each with its time share and per-type rate multipliers) are each
   evaluated as stationary at their rates; a type's attainment is the request-weighted mean over
   regimes. Inside a regime, arrivals clump: ``c_a^2`` is the measured index of dispersion of 1-second
   counts around their window's mean, thinned by the replica's share of the arrivals. This, not a
   Poisson assumption, is where most misses come from: the Azure traces have
   windows at 4-6x the median rate in which prefill saturates a replica.
5. A type's **attainment** in a regime is the mean over its samples of ``P(TTFT ok) * P(TPOT ok)``
   (independence: pessimistic, as both suffer in the same bursts); a regime in which the replica is
   overloaded counts as 0. A type's **SLO capacity** on a replica is the highest rate of that type (alone,
   or scaling a given mix) at which every type's attainment reaches the target.

Step times with PP > 1 are the cost model's (``costmodel.pipeline``), as in the simulator: a step is one
round of the ``pp`` batches in flight, carrying up to ``pp`` times the chunk budget, and lasts ``pp`` stage
times of its largest micro-batch, so a chunk costs its whole trip through the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import numpy as np
from scipy.special import gammainccinv, gammaln, ndtr

from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.workload.burstiness import Burstiness, LengthSample
from oserve.workload.slo import Slo

# KV cache. The decoding sequences' tokens fluctuate around their mean (``kv_occupancy_tokens``); a
# replica fits when the occupancy is over ``KV_HEADROOM`` of the cache at most ``KV_OVERFLOW`` of the
# time, the normal tail at ``KV_Z`` sd (``kv_mean_held_tokens``: mean + KV_Z sd in a large population).
# KV_HEADROOM is for what the decode-phase sum leaves out: the prompts being prefilled (their chunks are
# written before their first token), half a block per sequence, vLLM's 1% admission watermark, and the
# length samples' error (a few dozen whole-trace samples per type; where the mix drifts they miss the
# window's outputs: on the SYNTHETIC diurnal day's 240-720 s window they give 164 tokens per request
# against its 182, and the variance's O^3 term weighs the long ones most; bench/elastic_kv_check.py).
KV_HEADROOM = 0.9
# KV_Z: an overflow is a preemption (the newest sequence's blocks are freed and it recomputes prompt and
# generated tokens), and a cache that overflows often cascades: the recomputed prefill stretches every
# step, so sequences live longer and the cache fills further (the simulator, like vLLM, drops to 0.15
# attainment at 1.2 sd of margin). The cache may therefore overflow only rarely against the 10% of
# requests a 0.9 target lets miss: 2.3% of the time (two standard deviations of a normal occupancy), a
# quarter of that 10%. Checked against the simulator on one replica (elastic_kv_check):
# accepted where it attains >= 0.995, rejected where it drops to 0.80.
KV_Z = 2.0
KV_OVERFLOW = float(ndtr(-KV_Z))  # the share of time the occupancy may be over the cache: 2.3%
KV_FEEDBACK_MAX = 0.8  # cap on the step time's elasticity in the tokens held (1 would be a runaway)
KV_ITERATIONS = 8  # bisections of a KV-bound regime's admitted share (its batch shrinks faster than it)
KV_FIT_SLACK = 1.02  # the admitted batch may exceed the KV bound by the step-time memo's grid error
BACKLOG_POINTS = 16  # midpoints over a KV-bound burst for the backlog's wait
REF_BATCH = 16
REF_CTX_TOKENS = 1024
PP_BATCH_GRID = 2 ** 0.25  # with PP, chunk extras are priced at the decode batch on this grid (19%)
MAX_UTILISATION = 0.98
STEADY_ITERATIONS = 24  # of the batch's fixed point (slow where the step grows nearly as fast as the batch)
STEADY_TOLERANCE = 0.02
EXACT_STEPS_BELOW = 64  # TPOT: exact binomial sum over chunk-step counts for outputs up to this


@dataclass(frozen=True)
class TypePrediction:
    """Predicted SLO attainment of one type on one replica (all 0 when the replica is overloaded)."""

    attainment: float
    ttft_attainment: float
    tpot_attainment: float
    mean_tpot_s: float
    mean_ttft_s: float


@dataclass(frozen=True)
class ReplicaPrediction:
    types: tuple[TypePrediction, ...]
    batch: float  # mean decoding sequences
    prefill_frac: float  # M: share of time spent on prompt chunks
    queue_utilisation: float  # rho of the prompt queue
    overloaded: bool

    def meets(self, target: float, rates_rps: list[float]) -> bool:
        return not self.overloaded and all(
            p.attainment >= target for p, r in zip(self.types, rates_rps) if r > 0)


def regime_duration_s(burst: Burstiness, num_regimes: int) -> float:
    """How long a burst regime's rates last: one window of replay time (the trace's regimes); a single
    regime is the whole stream, stationary (infinite)."""
    return burst.window_s if burst.counts is not None and num_regimes > 1 else math.inf


def backlog_waits_s(duration_s: float, growth: float) -> np.ndarray:
    """The extra waits of a KV-bound burst's fluid backlog at ``BACKLOG_POINTS`` arrival times, the
    midpoints of the window: a request arriving t s into it waits ``growth * t``."""
    return (np.arange(BACKLOG_POINTS) + 0.5) / BACKLOG_POINTS * duration_s * growth


def kv_occupancy_tokens(per_rps: np.ndarray, inp: np.ndarray, out: np.ndarray, step_s: float,
                        ca2: float = 1.0, feedback: float = 0.0) -> tuple[float, float]:
    """Mean and standard deviation of the KV tokens that decoding sequences hold, arrivals at ``per_rps``
    per (input, output) sample, one token each per step of ``step_s``.

    An M/G/inf population (every arrival decodes on its own, for its O steps): a sequence holds
    ``I + t`` tokens t steps into its decode, so by Campbell's theorem the mean is
    ``sum l O (I + O/2) tau`` and the variance ``sum l tau (O I^2 + I O^2 + O^3 / 3)`` (the integral of
    the square of what it holds over its life). Arrivals clumped within a regime (``ca2``, the index of
    dispersion of counts at 1 s, short against a sequence's life of seconds) multiply the variance by it.
    ``feedback`` is the step time's elasticity in the tokens held (attention reads all of them): a fuller
    cache stretches every step and so every sequence's life, which amplifies a slow fluctuation by
    ``1 / (1 - feedback)`` (quasi-static: the fluctuation feeds back on itself once per lifetime)."""
    mean = step_s * float((per_rps * out * (inp + out / 2)).sum())
    var = ca2 * step_s * float((per_rps * (out * inp * inp + inp * out * out + out ** 3 / 3)).sum())
    return mean, math.sqrt(max(var, 0.0)) / (1.0 - min(max(feedback, 0.0), KV_FEEDBACK_MAX))


def kv_mean_held_tokens(kv_tokens: float, mean_tokens: float, sd_tokens: float) -> float:
    """The largest mean occupancy, of the shape of one with this mean and sd, that the cache's
    ``KV_HEADROOM`` share holds with the occupancy over it at most ``KV_OVERFLOW`` of the time.

    The occupancy is a compound Poisson sum (a Poisson number of decoding sequences, each holding what it
    has written). It is approximated as ``s`` times a Poisson count, ``s = var / mean`` the size of the
    equivalent sequence (mean and variance matched; thinning the stream keeps ``s``): the normal
    approximation, mean + ``KV_Z`` sd, in a large population, and right where a few long sequences fill
    the cache (one 6,000-token prompt in a 6,240-token cache: the question is how often two overlap,
    which a normal tail overstates many times). Poisson tail with a continuous count (the regularised
    gamma function)."""
    cap = KV_HEADROOM * kv_tokens
    if mean_tokens <= 0 or sd_tokens <= 0:
        return cap
    unit = sd_tokens * sd_tokens / mean_tokens
    return unit * float(gammainccinv(cap / unit + 1.0, 1.0 - KV_OVERFLOW))


def kv_admitted_share(holds: Callable[[float], bool], estimate: float) -> float:
    """The largest share of a KV-bound stream whose batch the cache holds (``holds(share)``), by bisection
    in log over ``KV_ITERATIONS`` trials from the linear estimate (the batch shrinks faster than the rate,
    as the steps shorten, so the estimate is low); the smallest share tried when none holds (the caller's
    fit test then rejects it). The colocated and the decode-only replica's rule."""
    lo, hi, share = 0.0, 1.0, min(max(estimate, 1e-3), 1.0)
    for _ in range(KV_ITERATIONS):
        if holds(share):
            lo = share
        else:
            hi = share
        share = math.sqrt(lo * hi) if lo > 0 else hi / 2
    return lo if lo > 0 else hi


@dataclass
class ReplicaLatencyModel:
    """The latency model of one configuration; step times are memoised per instance."""

    cost: CostModel
    config: ReplicaConfig
    # step-time memos; pass one dict to models of the same hardware split to share them
    step_cache: dict[str, dict[tuple[float, float], float]] = field(default_factory=dict, repr=False)
    _layouts: dict[tuple[tuple[LengthSample, ...], tuple[Slo, ...]], _Layout] = field(
        default_factory=dict, repr=False)
    _chunkings: dict[tuple[int, int, int], _Chunking] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # with PP a step is a round of pp in-flight batches, each with the chunk budget (as in the
        # simulator): the step carries pp times the budget
        self.budget_tokens = self.cost.batched_tokens(self.config) * self.config.pp
        self.max_seqs = self.cost.max_seqs(self.config)
        self.kv_tokens = self.cost.kv_capacity_tokens(self.config)
        self.hw = self.config.timing
        self._decode = self.step_cache.setdefault("decode", {})
        self._chunk = self.step_cache.setdefault("chunk", {})

    # ---- step times (memoised on a coarse grid: the model is an approximation anyway) ---------------

    def decode_s(self, batch: float, ctx_per_seq: float) -> float:
        b = max(1, int(round(batch)))
        key = (b, _q(ctx_per_seq))
        t = self._decode.get(key)
        if t is None:
            t = float(self.cost.decode_step_s(self.hw, b, b * key[1]))
            self._decode[key] = t
        return float(t)

    def chunk_extra_s(self, chunk: int, cached: int, batch: float = REF_BATCH) -> float:
        """What a prompt chunk adds to a decode step of ``batch`` sequences. Without PP the batch changes
        it little (the step's GEMMs are over chunk + batch tokens, and the chunk dominates), so it is
        priced once at a reference batch of ``REF_BATCH`` sequences of ``REF_CTX_TOKENS`` context. With
        PP it does not: the round lasts ``pp`` stage times of its largest micro-batch and the decodes
        share micro-batches with the chunk's pieces (``costmodel.pipeline``), so a 1,200-token chunk
        adds 7 ms to a round of 16 decodes and 18 ms to one of 64 (Llama-2-13B, TP1 PP4, 512 tokens).
        The reference price is then scaled by the ratio of the chunk's extra at the batch (on a grid
        ``PP_BATCH_GRID`` apart) to its extra at the reference batch, both for a chunk of that size after
        no cached tokens on a coarser grid: how the round packs depends on the chunk's size, and the
        cached prefix adds attention work that the ratio carries along."""
        key = (_q(chunk), _q(cached))
        t = self._chunk.get(key)
        if t is None:
            t = self._chunk[key] = self._priced_extra_s(key[0], key[1], REF_BATCH)
        b = REF_BATCH if self.config.pp == 1 else _q_batch(batch)
        if b == REF_BATCH or t <= 0:
            return float(t)
        ratios = self.step_cache.setdefault("pp_batch_ratio", {})
        rkey = (_q_coarse(chunk), float(b))
        r = ratios.get(rkey)
        if r is None:
            ref = self._priced_extra_s(rkey[0], 0.0, REF_BATCH)
            r = ratios[rkey] = self._priced_extra_s(rkey[0], 0.0, b) / ref if ref > 0 else 1.0
        return float(t * r)

    def _priced_extra_s(self, chunk: float, cached: float, batch: int) -> float:
        """The cost model's step with one chunk beside ``batch`` decodes of ``REF_CTX_TOKENS`` context, less
        the decode step alone (priced once per batch)."""
        ctx = REF_CTX_TOKENS
        # the cost model splits the step over the pipeline's micro-batches (costmodel.pipeline)
        chunks = cast("tuple[tuple[float, float], ...]", ((chunk, cached),))
        step = self.cost.step_time_s(self.hw, chunks, batch, batch * ctx)
        refs = self.step_cache.setdefault("chunk_ref_decode", {})
        ref = refs.get((float(batch), 0.0))
        if ref is None:
            ref = refs[(float(batch), 0.0)] = self.cost.decode_step_s(self.hw, batch, batch * ctx)
        return max(step - ref, 0.0)

    def kv_bound(self, per_rps: np.ndarray, inp: np.ndarray, out: np.ndarray, batch: float, ctx: float,
                 step_s: float, ca2: float = 1.0) -> KvBound:
        """The KV cache's bound on a batch of ``batch`` sequences of mean context ``ctx`` stepping every
        ``step_s``: the colocated and the decode-only replica's KV rule (``kv_occupancy_tokens``,
        ``kv_mean_held_tokens``)."""
        _, sd = kv_occupancy_tokens(per_rps, inp, out, step_s, ca2, self.step_elasticity(batch, ctx))
        mean = batch * ctx  # Little's law: the occupancy's mean is the batch at the mean context
        held = kv_mean_held_tokens(self.kv_tokens, mean, sd)
        return KvBound(held / max(ctx, 1.0), held / mean if mean > 0 else math.inf, sd)

    def step_elasticity(self, batch: float, ctx: float) -> float:
        """d ln d(B) / d ln B at a fixed context per sequence (the tokens held grow with B): central
        difference over +-25%, wide against the memo's grid."""
        if batch < 2:
            return 0.0
        lo, hi = self.decode_s(batch / 1.25, ctx), self.decode_s(batch * 1.25, ctx)
        return math.log(hi / lo) / (2 * math.log(1.25)) if lo > 0 and hi > 0 else 0.0

    # ---- prediction --------------------------------------------------------------------------------

    def predict(self, samples: list[LengthSample], rates_rps: list[float], slos: list[Slo],
                burstiness: Burstiness | None = None, rate_scale: float = 1.0,
                target: float | None = None, stream_fraction: float = 1.0) -> ReplicaPrediction:
        """Attainment of each type at mean rates ``rates_rps`` on this replica, over the trace's load
        regimes at replay speed ``rate_scale`` (a stationary stream without ``burstiness``).

        ``stream_fraction`` is this replica's share of the trace's arrivals (thinning lowers their
        variability). With ``target``, the heaviest regimes go first and the prediction stops as soon as
        some type can no longer reach the target; its attainment is then the (below-target) upper bound.
        """
        rates = np.asarray(rates_rps, dtype=float)
        k = len(samples)
        burst = burstiness or Burstiness.poisson()
        regimes = burst.regimes(rate_scale)
        ca2 = burst.within_ca2(stream_fraction)
        mults = [np.asarray(r.multipliers) if r.multipliers else np.ones(k) for r in regimes]
        weights = [r.time_share * rates * m for r, m in zip(regimes, mults)]  # requests per regime
        den = np.sum(weights, axis=0)
        duration = regime_duration_s(burst, len(regimes))
        order = sorted(range(len(regimes)), key=lambda j: -float(mults[j].max()))
        sums = np.zeros((4, k))  # request-weighted attainment, TTFT, TPOT attainment, mean TPOT
        seen = np.zeros(k)
        heaviest = None
        for j in order:
            pred = self.predict_stationary(samples, rates * mults[j], slos, ca2, duration)
            if heaviest is None or regimes[j].time_share >= heaviest[0]:
                heaviest = (regimes[j].time_share, pred)
            w = weights[j]
            sums += w * np.array([[p.attainment, p.ttft_attainment, p.tpot_attainment,
                                   min(p.mean_tpot_s, 1e3)] for p in pred.types]).T
            seen += w
            if target is not None:
                upper = (sums[0] + (den - seen)) / np.where(den > 0, den, 1.0)
                if np.any((den > 0) & (upper < target)):
                    sums[0] = upper * den
                    break
        safe = np.where(den > 0, den, 1.0)
        avg = sums / np.where(seen > 0, seen, 1.0)
        avg[0] = sums[0] / safe
        types = tuple(TypePrediction(float(avg[0, t]), float(avg[1, t]), float(avg[2, t]), float(avg[3, t]),
                                     math.nan) if den[t] > 0 else IDLE for t in range(k))
        assert heaviest is not None  # there is always at least one regime
        typical = heaviest[1]
        return ReplicaPrediction(types, typical.batch, typical.prefill_frac, typical.queue_utilisation,
                                 typical.overloaded)

    def predict_stationary(self, samples: list[LengthSample], rates_rps: np.ndarray | list[float],
                           slos: list[Slo], ca2: float = 1.0,
                           duration_s: float = math.inf) -> ReplicaPrediction:
        """Attainment of each type at constant rates on this replica; ``ca2`` is the arrivals' squared
        coefficient of variation (1: Poisson), ``duration_s`` how long the rates last (a burst regime's
        window; infinite: stationary), which decides whether a KV-bound replica is overloaded or queues."""
        rates = np.asarray(rates_rps, dtype=float)
        k = len(samples)
        if float(rates.sum()) <= 0:
            return ReplicaPrediction((IDLE,) * k, 0.0, 0.0, 0.0, False)
        lay = self._layout(samples, slos)
        admitted, growth = 1.0, 0.0  # share of the arrivals the KV cache admits; backlog wait per second
        per, ctx, steady, kv = self._admit(lay, rates, 1.0, ca2)
        if kv is not None and steady.batch > kv.seqs and math.isfinite(duration_s):
            # a KV-bound burst: the largest share of the arrivals whose batch the cache holds
            trials: dict[float, tuple[np.ndarray, float, _Steady, KvBound | None]] = {}

            def holds(share: float) -> bool:
                trial = trials[share] = self._admit(lay, rates, share, ca2)
                return trial[3] is not None and trial[2].batch <= trial[3].seqs

            admitted = kv_admitted_share(holds, kv.share)
            per, ctx, steady, kv = trials.get(admitted) or self._admit(lay, rates, admitted, ca2)
            growth = 1.0 / admitted - 1.0
        batch, budget, ch, d, m_frac = steady.batch, steady.budget, steady.ch, steady.d, steady.m_frac
        total = float(per.sum())
        work = ch.cost + d * lay.inp / budget  # prompt queue work: steps shared at full chunks
        rho = float((per * work).sum())
        mean_w = rho / total
        cs2 = float((per * (work - mean_w) ** 2).sum()) / total / max(mean_w * mean_w, 1e-18)
        fits = (kv is not None and batch <= self.max_seqs and batch <= kv.seqs * KV_FIT_SLACK
                and not self._tips(lay, per, ctx, batch, kv.sd_tokens / max(ctx, 1.0)))
        if m_frac >= MAX_UTILISATION or rho >= MAX_UTILISATION or not fits:
            zero = TypePrediction(0.0, 0.0, 0.0, math.inf, math.inf)
            return ReplicaPrediction((zero,) * k, batch, m_frac, rho, True)
        d = self.decode_s(batch, ctx)
        step_s = d / (1.0 - m_frac)
        # chunk steps per second: prompt tokens per second over the tokens a chunk step carries
        # (the full budget when the queue is busy, one prompt's chunk otherwise)
        tokens = float((per * lay.inp).sum())
        chunks_per_s = float((per * ch.num).sum())
        tokens_per_chunk = (1 - rho) * tokens / chunks_per_s + rho * budget
        q = min(1.0, tokens / tokens_per_chunk * step_s)
        chunk_w = per[ch.owner]
        extras = np.append(ch.extras, ch.full_extra)
        weights = np.append(chunk_w / chunk_w.sum() * (1 - rho), rho)
        wait = _Wait(rho, mean_w, cs2, ca2)
        own = ch.cost + ch.num * d + 0.5 * step_s * min(1.0, batch)
        if growth > 0:  # KV-bound burst: arriving t s into it, a request waits growth * t more
            ttft_ok = np.mean([wait.attainment(lay.ttft_bound - own - b)
                               for b in backlog_waits_s(duration_s, growth)], axis=0)
            own = own + 0.5 * duration_s * growth
        else:
            ttft_ok = wait.attainment(lay.ttft_bound - own)
        # a request that decodes inside a busy period of the prompt queue gets a full chunk at every
        # step; busy periods last (chunks per prompt) / (1 - rho) steps, stretched by the variability
        # (Kingman's factor), so P(all n steps busy) = rho (1 - 1/L)^n
        span = chunks_per_s / total / (1.0 - rho) * (ca2 + cs2) / 2.0
        n = np.maximum(lay.out - 1, 0)
        in_run = rho * np.power(max(1.0 - 1.0 / span, 0.0), n) if span > 1 else np.zeros(len(n))
        run_ok = (d + ch.full_extra <= lay.tpot_bound) | (n == 0)
        tpot_ok = in_run * run_ok + (1.0 - in_run) * _tpot_attainment(lay.out, d, q, extras, weights,
                                                                       lay.tpot_bound)
        mean_tpot = d + q * float((extras * weights).sum())
        cnt = lay.count
        both = np.bincount(lay.typ, ttft_ok * tpot_ok, k) / cnt
        t_ok = np.bincount(lay.typ, ttft_ok, k) / cnt
        p_ok = np.bincount(lay.typ, tpot_ok, k) / cnt
        ttft_mean = np.bincount(lay.typ, own, k) / cnt + wait.mean_s
        preds = tuple(TypePrediction(float(both[t]), float(t_ok[t]), float(p_ok[t]), mean_tpot,
                                     float(ttft_mean[t])) if rates[t] > 0 else IDLE for t in range(k))
        return ReplicaPrediction(preds, batch, m_frac, rho, False)

    def _admit(self, lay: _Layout, rates: np.ndarray, share: float,
               ca2: float) -> tuple[np.ndarray, float, _Steady, KvBound | None]:
        """The replica at ``share`` of the arrivals: requests/s per sample, the output-weighted context,
        the steady batch and the KV bound (None when prefill-bound or a runaway: overloaded whatever the
        KV cache holds)."""
        per = rates[lay.typ] * share / lay.count[lay.typ]  # requests/s each sample stands for
        # KV tokens per decoding sequence, time-averaged: output-weighted (Little on token-seconds)
        out_rate = max(float((per * lay.out).sum()), 1e-12)
        ctx = float((per * lay.out * (lay.inp + lay.out / 2)).sum()) / out_rate
        steady = self._steady_batch(lay, per, ctx)
        if steady.m_frac >= MAX_UTILISATION or not steady.converged:
            return per, ctx, steady, None
        step_s = steady.d / (1.0 - steady.m_frac)
        return per, ctx, steady, self.kv_bound(per, lay.inp, lay.out, steady.batch, ctx, step_s, ca2)

    def _steady_batch(self, lay: _Layout, per: np.ndarray, ctx: float) -> _Steady:
        """The lowest fixed point of ``B = f(B) = out_rate * d(B) / (1 - M(B))``, iterated up from one
        sequence (f grows with B, so the iterates rise to it), with the step's parts at it; not
        ``converged`` when they are still rising after ``STEADY_ITERATIONS`` (no fixed point in reach:
        the step grows as fast as the batch, a runaway)."""
        out_rate = float((per * lay.out).sum())  # decode tokens per second
        batch, converged = 1.0, False
        # with PP, first with the chunks priced at the reference batch (memoised once), then at the batch:
        # the iterates visit a few batches of the grid, each a pricing of every sample's chunks
        for priced_at_batch in ((False, True) if self.config.pp > 1 else (False,)):
            converged = False
            for _ in range(STEADY_ITERATIONS):
                part = self._step_parts(lay, per, ctx, batch, priced_at_batch)
                if part.m_frac >= MAX_UTILISATION:
                    if priced_at_batch or self.config.pp == 1:
                        return _Steady(batch, *part, converged=True)
                    break
                new = out_rate * part.d / (1.0 - part.m_frac)
                done = abs(new - batch) <= STEADY_TOLERANCE * max(batch, 1.0)
                batch = new
                if done or batch > 2 * self.max_seqs:
                    converged = done
                    break
        return _Steady(batch, *self._step_parts(lay, per, ctx, batch), converged=converged)

    def _step_parts(self, lay: _Layout, per: np.ndarray, ctx: float, batch: float,
                    priced_at_batch: bool = True) -> _StepParts:
        budget = self._budget(batch)
        ch = self._chunking(lay, budget, batch if priced_at_batch else REF_BATCH)
        return _StepParts(budget, ch, self.decode_s(batch, ctx), float((per * ch.cost).sum()))

    def _tips(self, lay: _Layout, per: np.ndarray, ctx: float, batch: float, sd_seqs: float) -> bool:
        """Whether a rise of the batch by ``KV_Z`` of its standard deviations feeds itself: ``f(B')`` at
        ``B' = B + KV_Z sd`` at or above ``B'``. Then the fixed point is not robust to the fluctuations
        the KV test allows for: the longer steps of the larger batch (with PP the chunk's round grows
        with the decodes beside it) keep more sequences decoding, and the replica tips into a state of
        long steps and a saturated prompt queue (the simulator's TP1 PP4 replica of Llama-2-13B at 18.7
        req/s of the SYNTHETIC day's mix: steps of 78 ms, TTFT 46 s, where the lower fixed point has 28
        ms)."""
        high = batch + KV_Z * sd_seqs
        part = self._step_parts(lay, per, ctx, high)
        if part.m_frac >= MAX_UTILISATION:
            return True
        return float((per * lay.out).sum()) * part.d / (1.0 - part.m_frac) >= high

    def _budget(self, batch: float) -> int:
        """Prompt tokens a step can carry: the budget less the decodes' tokens, on a grid of 1/16 of the
        budget (so that chunkings are reused across batches)."""
        grain = max(16, self.budget_tokens // 16)
        free = max(self.budget_tokens - batch, grain)
        return int(max(grain, round(free / grain) * grain))

    def _layout(self, samples: list[LengthSample], slos: list[Slo]) -> _Layout:
        key = (tuple(samples), tuple(slos))
        lay = self._layouts.get(key)
        if lay is None:
            typ = np.concatenate([np.full(len(s.input_tokens), t) for t, s in enumerate(samples)])
            inp = np.concatenate([np.asarray(s.input_tokens, dtype=float) for s in samples])
            out = np.concatenate([np.asarray(s.output_tokens, dtype=float) for s in samples])
            lay = _Layout(typ, inp, out, np.bincount(typ, minlength=len(samples)).astype(float),
                          np.array([slos[t].ttft_s for t in typ]), np.array([slos[t].tpot_s for t in typ]))
            self._layouts[key] = lay
        return lay

    def _chunking(self, lay: _Layout, budget: int, batch: float = REF_BATCH) -> _Chunking:
        """Every sample prompt's chunks at this budget, with their extra step times beside ``batch``
        decodes (which matters with PP only: ``chunk_extra_s``)."""
        b = REF_BATCH if self.config.pp == 1 else _q_batch(batch)
        key = (id(lay), budget, b)
        ch = self._chunkings.get(key)
        if ch is None:
            ex_list: list[float] = []
            owner_list: list[int] = []
            for idx, i in enumerate(lay.inp):
                n = max(1, math.ceil(i / budget))
                for j in range(n):
                    ex_list.append(self.chunk_extra_s(int(min(budget, i - j * budget)), j * budget, b))
                    owner_list.append(idx)
            ex, owner = np.asarray(ex_list), np.asarray(owner_list)
            ch = _Chunking(ex, owner, np.bincount(owner, ex, len(lay.inp)),
                           np.bincount(owner, minlength=len(lay.inp)).astype(float),
                           self.chunk_extra_s(budget, budget // 2, b))
            self._chunkings[key] = ch
        return ch


IDLE = TypePrediction(1.0, 1.0, 1.0, 0.0, 0.0)


class KvBound(NamedTuple):
    seqs: float  # decoding sequences (at the mean context) the cache holds with its margin
    share: float  # the share of the stream whose occupancy it holds (1 or more: all of it)
    sd_tokens: float  # standard deviation of the occupancy


class _StepParts(NamedTuple):
    budget: int  # prompt tokens a step carries
    ch: _Chunking
    d: float  # decode step
    m_frac: float  # M: share of time on prompt chunks


class _Steady(NamedTuple):
    batch: float
    budget: int
    ch: _Chunking
    d: float
    m_frac: float
    converged: bool


@dataclass(frozen=True)
class _Layout:
    """The samples of all types, flattened, with each one's type and SLO bounds."""

    typ: np.ndarray
    inp: np.ndarray
    out: np.ndarray
    count: np.ndarray  # samples per type
    ttft_bound: np.ndarray
    tpot_bound: np.ndarray


@dataclass(frozen=True)
class _Chunking:
    extras: np.ndarray  # extra step time of each chunk of each sample prompt
    owner: np.ndarray  # the sample each chunk belongs to
    cost: np.ndarray  # per sample: the sum of its chunks' extras
    num: np.ndarray  # per sample: its number of chunks
    full_extra: float  # extra time of a full chunk (half-way through a prompt)


class _Wait:
    """The FCFS prompt queue's waiting time: Kingman's mean, exponential tail with an atom at 0."""

    def __init__(self, rho: float, mean_work_s: float, cs2: float, ca2: float = 1.0) -> None:
        self.rho = rho
        self.mean_s = rho / (1.0 - rho) * (ca2 + cs2) / 2.0 * mean_work_s if rho > 0 else 0.0

    def attainment(self, slack_s: np.ndarray) -> np.ndarray:
        """P(W <= slack) per element (0 where the slack is negative)."""
        slack = np.asarray(slack_s, dtype=float)
        if self.mean_s <= 0:
            return np.where(slack >= 0, 1.0, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            tail = self.rho * np.exp(-self.rho * np.maximum(slack, 0.0) / self.mean_s)
        return np.where(slack >= 0, 1.0 - np.nan_to_num(tail, nan=0.0), 0.0)


def _tpot_attainment(outputs: np.ndarray, d: float, q: float, extras: np.ndarray, weights: np.ndarray,
                     bound_s: float | np.ndarray) -> np.ndarray:
    """P(TPOT <= bound) for each output length (bound a scalar or one per output): ``d + S / (O - 1)``,
    S the sum of a Binomial(O-1, q) number of chunk extras drawn from (extras, weights): exact for 0 or 1
    chunk steps, normal beyond."""
    outputs = np.asarray(outputs, dtype=float)
    bound = np.broadcast_to(np.asarray(bound_s, dtype=float), outputs.shape)
    out = np.ones(len(outputs))
    n = np.maximum(outputs - 1, 0)
    live = np.isfinite(bound) & (n > 0)
    out[live & (bound < d)] = 0.0
    live &= bound >= d
    if q <= 0 or not len(extras) or not live.any():
        return out
    p = weights / weights.sum()
    mu = float((extras * p).sum())
    var = float(((extras - mu) ** 2 * p).sum())
    order = np.argsort(extras)
    cdf_x, cdf_p = extras[order], np.cumsum(p[order])
    slack = np.where(live, (bound - d) * n, 0.0)  # total extra time each request tolerates
    small = live & (n < EXACT_STEPS_BELOW)
    if small.any():
        ns, sl = n[small][:, None], slack[small][:, None]
        ks = np.arange(EXACT_STEPS_BELOW)[None, :]
        pmf = _binom_pmf(ks, ns, q)
        pos = np.searchsorted(cdf_x, sl[:, 0], side="right") - 1
        one = np.where(pos >= 0, cdf_p[np.maximum(pos, 0)], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            many = ndtr((sl - ks * mu) / np.sqrt(np.maximum(ks * var, 1e-18)))
        ok = np.where(ks == 0, 1.0, np.where(ks == 1, one[:, None], many))
        out[small] = (pmf * ok).sum(axis=1)
    large = live & (n >= EXACT_STEPS_BELOW)
    if large.any():  # compound binomial sum ~ normal
        nl = n[large]
        mean = nl * q * mu
        sd = np.sqrt(np.maximum(nl * q * (var + mu * mu * (1 - q)), 1e-18))
        out[large] = ndtr((slack[large] - mean) / sd)
    return out


_LOG_FACT = gammaln(np.arange(EXACT_STEPS_BELOW + 1, dtype=float) + 1)


def _binom_pmf(k: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Binomial(n, q) probabilities of k (0 where k > n) for n < EXACT_STEPS_BELOW, from a log-factorial
    table (scipy.stats' per-call overhead is too much here)."""
    if q >= 1.0:
        return np.where(k == n, 1.0, 0.0)
    ni = n.astype(np.int64)
    kk = np.minimum(k, ni)
    log = (_LOG_FACT[ni] - _LOG_FACT[kk] - _LOG_FACT[ni - kk] + kk * math.log(q)
           + (ni - kk) * math.log1p(-q))
    return np.where(k <= ni, np.exp(log), 0.0)


def _q_batch(batch: float) -> int:
    """A decode batch on a geometric grid ``PP_BATCH_GRID`` apart (exact below 8 sequences)."""
    if batch < 8:
        return max(1, int(round(batch)))
    return int(round(2.0 ** (round(math.log2(batch) / math.log2(PP_BATCH_GRID)) * math.log2(PP_BATCH_GRID))))


def _q_coarse(x: float) -> float:
    """``_q`` on a grid of 2^(1/8) (~9% apart) above 16."""
    if x < 16:
        return float(round(x))
    return float(2.0 ** (round(math.log2(x) * 8) / 8))


def _q(x: float) -> float:
    """A geometric grid (~2% apart, so within 1.1%) for memo keys; exact below 16."""
    if x < 16:
        return float(round(x))
    return float(2.0 ** (round(math.log2(x) * 32) / 32))


KingmanWait = _Wait  # the same queue for the prefill-only replica (costmodel.prefill_latency)

__all__ = ["KingmanWait", "ReplicaLatencyModel", "ReplicaPrediction", "TypePrediction"]
