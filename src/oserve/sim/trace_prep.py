"""Fitting a trace to a model's context window before planning and simulating it."""

from __future__ import annotations

import numpy as np

from oserve.workload.trace import Trace


def clip_to_context(trace: Trace, max_context_tokens: int) -> tuple[Trace, int]:
    """Shorten requests longer than the context window; returns the trace and how many were shortened.

    The output is kept up to half the window, and the prompt is cut to what remains (as a client trims
    a conversation's history to fit).
    """
    ins = np.asarray(trace.input_tokens, dtype=np.int64)
    outs = np.asarray(trace.output_tokens, dtype=np.int64)
    over = ins + outs > max_context_tokens
    if not over.any():
        return trace, 0
    new_out = np.where(over, np.minimum(outs, max_context_tokens // 2), outs)
    new_in = np.where(over, np.minimum(ins, max_context_tokens - new_out), ins)
    clipped = Trace(trace.arrival_s, np.maximum(new_in, 1), new_out, trace.name, dict(trace.meta))
    return clipped, int(over.sum())
