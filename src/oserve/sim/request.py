"""The simulator's request entity: one request's progress inside a replica."""

from __future__ import annotations


class Seq:
    """A request being served: how much of its prompt is cached and how many tokens it has produced.

    A prefill chunk of c tokens adds c to ``num_cached``; the step that completes the prefill samples one
    token. A decode step writes the last sampled token's KV (``num_cached`` + 1) and samples the next.
    After a preemption by recompute the whole sequence so far (prompt and generated tokens) is prefilled
    again (``prefill_target``), and generation continues where it stopped.
    """

    __slots__ = ("req_id", "type_id", "prompt_tokens", "output_tokens", "prefill_target",
                 "num_cached", "num_generated", "num_blocks", "num_preemptions", "tick0")

    def __init__(self, req_id: int, type_id: int, prompt_tokens: int, output_tokens: int) -> None:
        self.req_id = req_id
        self.type_id = type_id
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.prefill_target = prompt_tokens
        self.num_cached = 0
        self.num_generated = 0
        self.num_blocks = 0
        self.num_preemptions = 0
        self.tick0 = -1  # >= 0 while in a replica's DecodeSet: counters as of that tick (sim.decode_set)

    @property
    def is_prefilling(self) -> bool:
        return self.num_cached < self.prefill_target

    @property
    def remaining_output(self) -> int:
        return self.output_tokens - self.num_generated

    def max_tokens(self) -> int:
        """Most KV tokens the sequence ever holds (prompt plus all but the last output token)."""
        return self.prompt_tokens + self.output_tokens - 1

    def __repr__(self) -> str:
        return (f"Seq(req={self.req_id}, cached={self.num_cached}/{self.prefill_target}, "
                f"gen={self.num_generated}/{self.output_tokens}, blocks={self.num_blocks})")
