"""Paged KV-cache blocks of one replica: a counter with the invariant that nothing is over-allocated."""

from __future__ import annotations

from oserve.common.errors import OServeError


class KvInvariantError(OServeError):
    """The simulator tried to hand out more KV blocks than the replica has (a simulator bug)."""


class BlockPool:
    """``num_blocks`` blocks of ``block_tokens`` tokens; sequences hold whole blocks."""

    __slots__ = ("num_blocks", "block_tokens", "num_free", "peak_used")

    def __init__(self, num_blocks: int, block_tokens: int) -> None:
        if num_blocks < 0 or block_tokens < 1:
            raise ValueError("a block pool needs num_blocks >= 0 and block_tokens >= 1")
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        self.num_free = num_blocks
        self.peak_used = 0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def allocate(self, n: int) -> None:
        if n > self.num_free:
            raise KvInvariantError(f"allocating {n} KV blocks with only {self.num_free} free")
        self.num_free -= n
        used = self.num_blocks - self.num_free
        if used > self.peak_used:
            self.peak_used = used

    def release(self, n: int) -> None:
        self.num_free += n
        if self.num_free > self.num_blocks:
            raise KvInvariantError(f"released more KV blocks than were allocated ({self.num_free} "
                                   f"free of {self.num_blocks})")
