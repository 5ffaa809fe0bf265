"""A simulated replica that a deployment switch can stop, drain, and take sequences from or give to.

This is the switching hook of the simulator, kept apart from ``ReplicaSim`` (which it extends without
changing): a stopping replica takes no new requests; sequences marked for migration leave it at its next
step boundary (the decode run in flight is cut there), freeing their KV blocks; another replica adopts a
migrated sequence with its KV cache (blocks allocated, decoding resumes at its next step boundary).
"""

from __future__ import annotations

from oserve.sim.request import Seq
from oserve.sim.replica import ReplicaSim


class SwitchableReplica(ReplicaSim):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.accepting = True
        self.to_extract: set[int] = set()  # req ids to hand over at the next step boundary
        self.extracted: list[Seq] = []

    def stop_accepting(self) -> list[Seq]:
        """Stop taking work; returns the queued sequences (no KV held) for re-routing."""
        self.accepting = False
        queued = list(self.waiting)  # waiting sequences hold no blocks (preemption released them)
        self.waiting.clear()
        return queued

    def mark_for_extraction(self, req_ids, now_s: float) -> float | None:
        """Hand these sequences over at the next step boundary; returns a new step end if one moved."""
        self.to_extract |= set(req_ids)
        if self.batch is None:
            self._extract()
            return None
        return self._cut_run(now_s)

    def take_extracted(self) -> list[Seq]:
        out, self.extracted = self.extracted, []
        return out

    def adopt(self, seq: Seq, now_s: float) -> float | None:
        """Take a sequence with its KV cache; falls back to recompute when its blocks do not fit."""
        need = self.pool.blocks_for(seq.num_cached)
        if seq.num_cached and need <= self.pool.num_free:
            self.pool.allocate(need)
            seq.num_blocks = need
            self.running.append(seq)
        else:
            seq.num_blocks = 0
            preempt_free(seq)
            self.waiting.append(seq)
        if self.batch is None:
            return self._start_step(now_s)
        return self._cut_run(now_s)

    @property
    def is_empty(self) -> bool:
        return not self.running and not self.waiting and self.batch is None

    def _start_step(self, now_s: float) -> float | None:
        if self.to_extract:
            self._extract()
        return super()._start_step(now_s)

    def _extract(self) -> None:
        keep = []
        for seq in self.running:
            if seq.req_id in self.to_extract:
                self.pool.release(seq.num_blocks)
                seq.num_blocks = 0
                self.extracted.append(seq)
            else:
                keep.append(seq)
        self.running = keep
        self.to_extract = set()


def preempt_free(seq: Seq) -> None:
    """Reset a sequence whose blocks are already released to recompute its prompt and output so far."""
    seq.num_cached = 0
    seq.prefill_target = seq.prompt_tokens + seq.num_generated


__all__ = ["SwitchableReplica", "preempt_free"]
