"""Per-request records of one run, kept compact: numpy arrays and drop-reason codes, no retained objects.

A request's ``Seq`` lives only while the request is in the system; when it finishes its times and
preemption count go into the arrays (the sequences still in the system at the end are written by
``result``). The trace is read into plain Python numbers chunk by chunk (plain floats and ints are
faster in the event loop than numpy scalars; a chunk keeps memory flat for long traces). The records
also integrate the number of requests in the system over time.
"""

from __future__ import annotations

import numpy as np

from oserve.sim.metrics import DROP_REASONS, SimResult
from oserve.sim.request import Seq

CHUNK = 1 << 16
_REASON_CODE = {r: i + 1 for i, r in enumerate(DROP_REASONS)}  # 0: not dropped
# as objects: 8 bytes per request pointing at these five strings, not 84 (numpy's '<U21'); same values
_REASONS = np.array(("",) + DROP_REASONS, dtype=object)


class Records:
    def __init__(self, arrival_s, input_tokens, output_tokens, type_id) -> None:
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        self.input_tokens = np.asarray(input_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(output_tokens, dtype=np.int64)
        self.type_id = np.asarray(type_id, dtype=np.int64)
        n = self.n = len(self.arrival_s)
        self.first_tok = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.where = np.full(n, -1, dtype=np.int64)
        # disaggregated plans: when the prefill ended and when the KV reached the decode replica
        self.prefilled_s = np.full(n, np.nan)
        self.transferred_s = np.full(n, np.nan)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.drop_code = np.zeros(n, dtype=np.int8)
        self.first_arrival_s = float(self.arrival_s[0]) if n else 0.0
        self.last_arrival_s = float(self.arrival_s[-1]) if n else 0.0
        self.in_system = 0
        self.area = 0.0
        self.last_t = self.first_arrival_s
        self.num_events = 0

    def arrival_chunk(self, start: int) -> tuple[int, list[float], list[int], list[int], list[int]]:
        """From request ``start`` on (one chunk): (``start``, arrival times, prompt and output tokens,
        types) as lists."""
        end = min(start + CHUNK, self.n)
        return (start, self.arrival_s[start:end].tolist(), self.input_tokens[start:end].tolist(),
                self.output_tokens[start:end].tolist(), self.type_id[start:end].tolist())

    def advance(self, t: float) -> None:
        self.area += self.in_system * (t - self.last_t)
        self.last_t = t
        self.num_events += 1

    def drop(self, i: int, reason: str) -> None:
        self.drop_code[i] = _REASON_CODE[reason]

    def finished(self, seqs: list[Seq], t: float) -> None:
        finish, pre = self.finish, self.preemptions
        for seq in seqs:
            finish[seq.req_id] = t
            if seq.num_preemptions:
                pre[seq.req_id] = seq.num_preemptions
        self.in_system -= len(seqs)

    def result(self, end_s: float, util_bin_s: float, live: list[Seq]) -> SimResult:
        for seq in live:
            self.preemptions[seq.req_id] = seq.num_preemptions
        unfinished = np.isnan(self.finish) & (self.drop_code == 0)
        self.drop_code[unfinished] = _REASON_CODE["unfinished_at_horizon"]
        return SimResult(self.arrival_s, self.first_tok, self.finish, self.input_tokens,
                         self.output_tokens, self.type_id, self.where, self.preemptions,
                         _REASONS[self.drop_code], [], end_s, 0.0, self.num_events, self.area,
                         util_bin_s)
