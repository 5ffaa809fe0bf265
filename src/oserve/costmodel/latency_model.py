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
   ``B = sum_t l_t O_t * d / (1 - M)``, solved by fixed-point iteration. ``M >= 1``, more sequences than
   ``max_num_seqs`` or than the KV cache holds: the replica is overloaded (attainment 0).
2. **TPOT** (a request's mean time per output token after the first) is ``d + S / (O - 1)``: S is the
   extra time of the chunk steps among its ``O - 1`` decode steps. A step carries a chunk with
   probability ``q = n_chunks_per_s * d / (1 - M)``; the number of chunk steps is Binomial(O - 1, q) and
   each adds an ``m`` drawn from the chunk mix. Exact for zero or one chunk step (the empirical chunk
   costs), a normal approximation for more. So one 8192-token chunk in a short answer shows up in the
   tail, not only in the mean.
3. **TTFT** (queueing counts) is ``W + s(I) + r``: ``s(I)`` the request's own chunk steps
   (``sum (d + m)``), ``r`` half a step in flight, and ``W`` the wait in the FCFS prompt queue. The queue
   is a G/G/1 server whose work per request is its prefill time with steps shared at full chunks
   (``m + d * I / C'``), utilisation ``rho``; Kingman's mean ``W = rho/(1-rho) * (1 + c_s^2)/2 * E[w]``
   (arrivals Poisson *within* a regime, below; ``c_s^2`` the work's squared coefficient of variation),
   with an exponential tail and an atom at zero, ``P(W > x) = rho exp(-rho x / W)`` (exact for M/M/1).
   When the queue is busy, chunks pack to the full budget: a chunk step carries ``C'`` tokens with
   probability ``rho`` and one prompt's chunk otherwise, which sets how many steps carry a chunk.
4. **Bursts.** The trace's measured load regimes (``oserve.workload.burstiness``: 10-second windows
   grouped by prompt-token load, each with its time share and per-type rate multipliers) are each
   evaluated as stationary at their rates; a type's attainment is the request-weighted mean over
   regimes. This, not a Poisson assumption, is where most misses come from: the Azure traces have
   windows at 4-6x the median rate in which prefill saturates a replica.
5. A type's **attainment** in a regime is the mean over its samples of ``P(TTFT ok) * P(TPOT ok)``
   (independence: pessimistic, as both suffer in the same bursts); a regime in which the replica is
   overloaded counts as 0. A type's **SLO capacity** on a replica is the highest rate of that type (alone,
   or scaling a given mix) at which every type's attainment reaches the target.

Step times with PP > 1 follow the simulator's convention: a step's work is split into ``pp``
micro-batches that fill the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaln, ndtr

from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.workload.burstiness import Burstiness, LengthSample
from oserve.workload.slo import Slo

KV_HEADROOM = 0.9
MAX_UTILISATION = 0.98
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


@dataclass
class ReplicaLatencyModel:
    """The latency model of one configuration; step times are memoised per instance."""

    cost: CostModel
    config: ReplicaConfig
    _decode: dict = field(default_factory=dict, repr=False)
    _chunk: dict = field(default_factory=dict, repr=False)
    _types: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.budget_tokens = self.cost.batched_tokens(self.config)
        self.max_seqs = self.cost.max_seqs(self.config)
        self.kv_tokens = self.cost.kv_capacity_tokens(self.config)
        self.hw = self.config.hardware

    # ---- step times (memoised on a coarse grid: the model is an approximation anyway) ---------------

    def decode_s(self, batch: float, ctx_per_seq: float) -> float:
        b = max(1, int(round(batch)))
        key = (b, _q(ctx_per_seq))
        t = self._decode.get(key)
        if t is None:
            t = self.cost.decode_step_s(self.hw, b, b * key[1])
            self._decode[key] = t
        return t

    def chunk_extra_s(self, chunk: int, cached: int, batch: float, ctx_per_seq: float) -> float:
        """What a prompt chunk adds to a decode step of ``batch`` sequences (the whole step without
        decodes when ``batch`` < 1)."""
        b = int(round(batch))
        key = (_q(chunk), _q(cached), _q(b), _q(ctx_per_seq))
        t = self._chunk.get(key)
        if t is None:
            c, p, bb, ctx = key
            pp = self.hw.pp
            if pp > 1:  # as the simulator: the step split into pp micro-batches filling the pipeline
                step = self.cost.step_time_s(self.hw, ((c / pp, p),), math.ceil(bb / pp), bb * ctx / pp)
            else:
                step = self.cost.step_time_s(self.hw, ((c, p),), int(bb), bb * ctx)
            base = self.cost.decode_step_s(self.hw, int(bb), bb * ctx) if bb >= 1 else 0.0
            t = max(step - base, 0.0)
            self._chunk[key] = t
        return t

    # ---- prediction --------------------------------------------------------------------------------

    def predict(self, samples: list[LengthSample], rates_rps: list[float], slos: list[Slo],
                burstiness: Burstiness | None = None, rate_scale: float = 1.0) -> ReplicaPrediction:
        """Attainment of each type at mean rates ``rates_rps`` on this replica, over the trace's load
        regimes at replay speed ``rate_scale`` (a stationary stream without ``burstiness``)."""
        rates = np.asarray(rates_rps, dtype=float)
        k = len(samples)
        regimes = (burstiness or Burstiness.poisson()).regimes(rate_scale)
        num = np.zeros(k)
        den = np.zeros(k)
        parts = {"ttft": np.zeros(k), "tpot": np.zeros(k), "mtpot": np.zeros(k), "mttft": np.zeros(k)}
        overloaded = False
        first = None
        for reg in regimes:
            mult = np.asarray(reg.multipliers) if reg.multipliers else np.ones(k)
            local = rates * mult
            pred = self.predict_stationary(samples, list(local), slos)
            first = first or pred
            overloaded |= pred.overloaded
            w = reg.time_share * local  # requests of each type in this regime
            num += w * np.array([p.attainment for p in pred.types])
            parts["ttft"] += w * np.array([p.ttft_attainment for p in pred.types])
            parts["tpot"] += w * np.array([p.tpot_attainment for p in pred.types])
            parts["mtpot"] += w * np.array([min(p.mean_tpot_s, 1e3) for p in pred.types])
            parts["mttft"] += w * np.array([min(p.mean_ttft_s, 1e3) for p in pred.types])
            den += w
        safe = np.where(den > 0, den, 1.0)
        types = tuple(TypePrediction(float(num[t] / safe[t]) if den[t] > 0 else 1.0,
                                     float(parts["ttft"][t] / safe[t]) if den[t] > 0 else 1.0,
                                     float(parts["tpot"][t] / safe[t]) if den[t] > 0 else 1.0,
                                     float(parts["mtpot"][t] / safe[t]), float(parts["mttft"][t] / safe[t]))
                      for t in range(k))
        mean = self.predict_stationary(samples, list(rates), slos) if len(regimes) > 1 else first
        return ReplicaPrediction(types, mean.batch, mean.prefill_frac, mean.queue_utilisation,
                                 mean.overloaded or types_all_zero(types, rates))

    def predict_stationary(self, samples: list[LengthSample], rates_rps: list[float],
                           slos: list[Slo]) -> ReplicaPrediction:
        """Attainment of each type at constant rates (Poisson arrivals) on this replica."""
        rates = np.asarray(rates_rps, dtype=float)
        total = float(rates.sum())
        k = len(samples)
        idle = TypePrediction(1.0, 1.0, 1.0, 0.0, 0.0)
        if total <= 0:
            return ReplicaPrediction((idle,) * k, 0.0, 0.0, 0.0, False)
        ins = [np.asarray(s.input_tokens, dtype=float) for s in samples]
        outs = [np.asarray(s.output_tokens, dtype=float) for s in samples]
        ctx = sum(r * float(np.mean(i + o / 2)) for r, i, o in zip(rates, ins, outs)) / total
        out_rate = sum(r * float(np.mean(o)) for r, o in zip(rates, outs))  # decode tokens per second
        batch, chunks = 1.0, None
        for _ in range(4):  # fixed point of B = out_rate * d(B) / (1 - M(B)); d and M vary slowly in B
            chunks = self._chunks(ins, rates, batch, ctx)
            if chunks.work_per_s >= MAX_UTILISATION:
                break
            new = out_rate * chunks.decode_s / (1.0 - chunks.work_per_s)
            if abs(new - batch) <= 0.05 * max(batch, 1.0):
                batch = new
                break
            batch = new
        m_frac = chunks.work_per_s
        fits = batch <= self.max_seqs and batch * ctx <= KV_HEADROOM * self.kv_tokens
        if m_frac >= MAX_UTILISATION or not fits or chunks.queue_rho >= MAX_UTILISATION:
            zero = TypePrediction(0.0, 0.0, 0.0, math.inf, math.inf)
            return ReplicaPrediction((zero,) * k, batch, m_frac, chunks.queue_rho, True)
        d = chunks.decode_s
        step_s = d / (1.0 - m_frac)
        rho = chunks.queue_rho
        # chunk steps per second: prompt tokens per second over the tokens a chunk step carries
        # (the full budget when the queue is busy, one prompt's chunk otherwise)
        tokens_per_chunk = (1 - rho) * chunks.mean_tokens + rho * chunks.budget
        q = min(1.0, chunks.tokens_per_s / tokens_per_chunk * step_s)
        extras = np.append(chunks.extras, chunks.full_extra)
        weights = np.append(chunks.weights / max(chunks.weights.sum(), 1e-12) * (1 - rho), rho)
        wait = _Wait(rho, chunks.queue_mean_s, chunks.queue_cs2)
        preds = []
        for t in range(k):
            if rates[t] <= 0 and not len(ins[t]):
                preds.append(idle)
                continue
            own = np.array([chunks.own[int(i)] for i in ins[t]]) + 0.5 * step_s * min(1.0, batch)
            ttft_ok = wait.attainment(slos[t].ttft_s - own)
            tpot_ok = _tpot_attainment(outs[t], d, q, extras, weights, slos[t].tpot_s)
            both = ttft_ok * tpot_ok
            mean_extra = float((extras * weights).sum() / weights.sum())
            preds.append(TypePrediction(float(both.mean()), float(ttft_ok.mean()), float(tpot_ok.mean()),
                                        d + q * mean_extra, float(own.mean() + wait.mean_s)))
        return ReplicaPrediction(tuple(preds), batch, m_frac, rho, False)

    def _chunks(self, ins: list[np.ndarray], rates: np.ndarray, batch: float, ctx: float) -> _Chunks:
        """Every sample prompt's chunks at this batch: their extra step times and rates, M, and the
        prompt queue's work statistics."""
        # decodes take their tokens first (the batch on the memo grid, so that chunkings are reused)
        budget = max(int(self.budget_tokens - _q(round(batch))), 16)
        d = self.decode_s(batch, ctx)
        extras, weights, own, work_items, work_rates = [], [], {}, [], []
        work = tokens = num_chunks = 0.0
        for r, sample in zip(rates, ins):
            if r <= 0:
                continue
            per = r / len(sample)
            ex, owner, cost, n = self._type_chunks(sample, budget, batch, ctx)
            extras.append(ex)
            weights.append(np.full(len(ex), per))
            for i, c, k in zip(sample, cost, n):
                own[int(i)] = c + k * d
            work_items.append(cost + d * sample / budget)  # queue work: steps shared at full chunks
            work_rates.append(np.full(len(sample), per))
            work += per * float(cost.sum())
            tokens += per * float(sample.sum())
            num_chunks += per * float(n.sum())
        ws, ps = np.concatenate(work_items), np.concatenate(work_rates)
        lam = float(ps.sum())
        mean = float((ws * ps).sum() / lam)
        cs2 = float(((ws - mean) ** 2 * ps).sum() / lam) / max(mean * mean, 1e-18)
        full = self.chunk_extra_s(budget, budget // 2, batch, ctx)
        return _Chunks(budget, d, np.concatenate(extras), np.concatenate(weights), work, tokens,
                       tokens / max(num_chunks, 1e-12), full, own, lam * mean, mean, cs2)

    def _type_chunks(self, sample: np.ndarray, budget: int, batch: float, ctx: float):
        """(chunk extras, their prompt's index, per-prompt extra sum, per-prompt chunk count)."""
        key = (hash(sample.tobytes()), budget, _q(round(batch)), _q(ctx))
        hit = self._types.get(key)
        if hit is not None:
            return hit
        ex, owner = [], []
        for idx, i in enumerate(sample):
            n = max(1, math.ceil(i / budget))
            for j in range(n):
                ex.append(self.chunk_extra_s(int(min(budget, i - j * budget)), j * budget, batch, ctx))
                owner.append(idx)
        ex, owner = np.asarray(ex), np.asarray(owner)
        cost = np.bincount(owner, weights=ex, minlength=len(sample))
        n = np.bincount(owner, minlength=len(sample)).astype(float)
        hit = (ex, owner, cost, n)
        self._types[key] = hit
        return hit


def types_all_zero(types: tuple[TypePrediction, ...], rates: np.ndarray) -> bool:
    return all(p.attainment <= 0 for p, r in zip(types, rates) if r > 0) and bool((rates > 0).any())


@dataclass
class _Chunks:
    budget: int  # C': prompt tokens a step can carry
    decode_s: float  # d(B)
    extras: np.ndarray  # extra step time of each sample prompt's chunks
    weights: np.ndarray  # chunks per second of that kind
    work_per_s: float  # M
    tokens_per_s: float
    mean_tokens: float  # prompt tokens per unpacked chunk
    full_extra: float  # extra time of a full chunk
    own: dict  # input tokens -> time of the prompt's own chunk steps
    queue_rho: float
    queue_mean_s: float
    queue_cs2: float


class _Wait:
    """The FCFS prompt queue's waiting time: Kingman's mean, exponential tail with an atom at 0."""

    def __init__(self, rho: float, mean_work_s: float, cs2: float) -> None:
        self.rho = rho
        self.mean_s = rho / (1.0 - rho) * (1.0 + cs2) / 2.0 * mean_work_s if rho > 0 else 0.0

    def attainment(self, slack_s: np.ndarray) -> np.ndarray:
        """P(W <= slack) per element (0 where the slack is negative)."""
        slack = np.asarray(slack_s, dtype=float)
        if self.mean_s <= 0:
            return np.where(slack >= 0, 1.0, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            tail = self.rho * np.exp(-self.rho * np.maximum(slack, 0.0) / self.mean_s)
        return np.where(slack >= 0, 1.0 - np.nan_to_num(tail, nan=0.0), 0.0)


def _tpot_attainment(outputs: np.ndarray, d: float, q: float, extras: np.ndarray, weights: np.ndarray,
                     bound_s: float) -> np.ndarray:
    """P(TPOT <= bound) for each output length: ``d + S / (O - 1)``, S the sum of a Binomial(O-1, q)
    number of chunk extras drawn from (extras, weights): exact for 0 or 1 chunk steps, normal beyond."""
    outputs = np.asarray(outputs, dtype=float)
    if math.isinf(bound_s):
        return np.ones(len(outputs))
    if d > bound_s:
        return np.zeros(len(outputs))
    if q <= 0 or not len(extras):
        return np.ones(len(outputs))
    p = weights / weights.sum()
    mu = float((extras * p).sum())
    var = float(((extras - mu) ** 2 * p).sum())
    order = np.argsort(extras)
    cdf_x, cdf_p = extras[order], np.cumsum(p[order])
    n = np.maximum(outputs - 1, 0)
    slack = (bound_s - d) * n  # total extra time each request tolerates
    out = np.ones(len(outputs))
    small = (n > 0) & (n < EXACT_STEPS_BELOW)
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
    large = n >= EXACT_STEPS_BELOW
    if large.any():  # compound binomial sum ~ normal
        nl = n[large]
        mean = nl * q * mu
        sd = np.sqrt(np.maximum(nl * q * (var + mu * mu * (1 - q)), 1e-18))
        out[large] = ndtr((slack[large] - mean) / sd)
    return out


def _binom_pmf(k: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Binomial(n, q) probabilities of k (0 where k > n), vectorised without scipy.stats' overhead."""
    if q >= 1.0:
        return np.where(k == n, 1.0, 0.0)
    kk = np.minimum(k, n)
    log = (gammaln(n + 1) - gammaln(kk + 1) - gammaln(n - kk + 1) + kk * math.log(q)
           + (n - kk) * math.log1p(-q))
    return np.where(k <= n, np.exp(log), 0.0)


def _q(x: float) -> float:
    """A geometric grid (~2% apart, so within 1.1%) for memo keys; exact below 16."""
    if x < 16:
        return float(round(x))
    return float(2.0 ** (round(math.log2(x) * 32) / 32))


__all__ = ["ReplicaLatencyModel", "ReplicaPrediction", "TypePrediction"]
