"""KV hand-off times of a disaggregated plan's groups, for the simulator (``costmodel.kv_transfer``).

``PlanHandoff`` prices the transfer from a prefill replica to a decode replica of its group over the link
between their GPUs (NVLink when all of them share a node, the inter-node network otherwise); pairs with
the same configurations and link share one memoised ``KvHandoff``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from oserve.costmodel.catalog import ClusterSpec, ModelSpec
from oserve.costmodel.kv_transfer import KvHandoff, KvLink
from oserve.planner.plan import Replica


class HandoffTimer(Protocol):
    def exposed_s(self, prefill_id: int, decode_id: int, prompt_tokens: int, last_pass_s: float) -> float:
        """Time from the end of the prefill's last pass (of ``last_pass_s``) until the KV is on the
        decode replica (``last_pass_s`` 0: a transfer that starts later, with nothing to overlap)."""


class PlanHandoff:
    def __init__(self, model: ModelSpec, replicas: Sequence[Replica], cluster: ClusterSpec,
                 overlap: bool = True) -> None:
        self.model, self.replicas, self.cluster, self.overlap = model, replicas, cluster, overlap
        self._pairs: dict[tuple[int, int], KvHandoff] = {}
        self._shared: dict[tuple, KvHandoff] = {}

    def handoff(self, prefill_id: int, decode_id: int) -> KvHandoff:
        pair = self._pairs.get((prefill_id, decode_id))
        if pair is None:
            p, d = self.replicas[prefill_id], self.replicas[decode_id]
            link = KvLink.between(self.cluster, p.gpus, d.gpus)
            key = (p.config.hardware, d.config.hardware, link)
            pair = self._shared.get(key)
            if pair is None:
                pair = self._shared[key] = KvHandoff(self.model, p.config, d.config, link, self.overlap)
            self._pairs[(prefill_id, decode_id)] = pair
        return pair

    def exposed_s(self, prefill_id: int, decode_id: int, prompt_tokens: int, last_pass_s: float) -> float:
        return self.handoff(prefill_id, decode_id).exposed_s(prompt_tokens, last_pass_s)


class ConstantHandoff:
    """A test double: every hand-off takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def exposed_s(self, prefill_id: int, decode_id: int, prompt_tokens: int, last_pass_s: float) -> float:
        return self.seconds


__all__ = ["ConstantHandoff", "HandoffTimer", "PlanHandoff"]
