"""The KV-cache hand-off of prefill/decode disaggregation: bytes moved and the time the decode side waits.

A prefill replica hands each prompt's KV cache to a decode replica. The bytes are the model's KV bytes
per token (every layer's K and V for every KV head, in the replicas' KV cache dtype, scale overhead
included) times the prompt's tokens. The transfer runs layer by layer, as vLLM's KV connectors (NIXL,
P2P NCCL) move it: one message per layer, each layer's KV split over the GPUs that hold it, every GPU
with its own link (its NVLink port within a node, its own NIC across nodes, as in a DGX H100), so a
layer's message goes over ``min(tp_prefill, tp_decode)`` links in parallel. A message's time is the
measured NCCL send/recv time of its size (``costmodel.network``: within a node on NVLink, scaled to the
GPU's link bandwidth; across nodes on the measured inter-node profile, scaled to the cluster's network
bandwidth), so per-message latency counts for short prompts and bandwidth for long ones.

**Overlap.** A connector that sends each layer as soon as the prefill's last forward pass wrote it
hides the transfer behind that pass: with L layers, per-layer compute ``c = T_c / L`` and transfer
``x = T_x / L``, the two-stage pipeline ends ``c + x + (L - 1) max(c, x)`` after the pass starts, so the
decode side waits ``exposed = max(x, T_x - T_c (L - 1) / L)`` beyond the pass (``T_x`` without overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import DEFAULT_INTER_NODE_GBPS, ClusterSpec, ModelSpec
from oserve.costmodel.network import send_recv_s
from oserve.costmodel.precision import kv_format
from oserve.costmodel.replica_config import ReplicaConfig


def kv_bytes_per_token(model: ModelSpec, kv_cache_dtype: str = "bf16") -> float:
    """KV bytes one token occupies over all layers of the model (K and V, every KV head)."""
    per_element = kv_format(kv_cache_dtype).bytes_per_element(model.head_dim).value
    return model.num_layers * 2 * model.num_kv_heads * model.head_dim * per_element


@dataclass(frozen=True)
class KvLink:
    """The link between two replicas' GPUs: NVLink (``same_node``) at ``intra_node_gbps`` per GPU, or
    the inter-node network at ``inter_node_gbps`` per GPU."""

    same_node: bool
    intra_node_gbps: float
    inter_node_gbps: float = DEFAULT_INTER_NODE_GBPS

    @staticmethod
    def between(cluster: ClusterSpec, gpus_a: tuple[int, ...], gpus_b: tuple[int, ...]) -> KvLink:
        """The link between two replicas placed on these (global) GPU ids of ``cluster``."""
        gpus = cluster.gpus
        for g in (*gpus_a, *gpus_b):
            if not 0 <= g < len(gpus):
                raise ConfigError(f"GPU {g} is not in cluster {cluster.describe()}")
        nodes = {gpus[g].node_id for g in (*gpus_a, *gpus_b)}
        gbps = min(cluster.gpu_spec(gpus[g].gpu_type).intra_node_gbps for g in (*gpus_a, *gpus_b))
        return KvLink(len(nodes) == 1, gbps, cluster.inter_node_gbps)

    def message_s(self, size_bytes: float) -> float:
        """One point-to-point message over one GPU's link."""
        if self.same_node:
            return send_recv_s(size_bytes, True, self.intra_node_gbps)
        return send_recv_s(size_bytes, False) * DEFAULT_INTER_NODE_GBPS / self.inter_node_gbps


@dataclass
class KvHandoff:
    """The hand-off from a prefill replica of ``prefill`` to a decode replica of ``decode`` over ``link``;
    transfer times are memoised per prompt length."""

    model: ModelSpec
    prefill: ReplicaConfig
    decode: ReplicaConfig
    link: KvLink
    overlap: bool = True  # the connector sends layer by layer during the last forward pass
    _memo: dict[int, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.prefill.kv_cache_dtype != self.decode.kv_cache_dtype:
            raise ConfigError(f"a disaggregated group needs one KV cache dtype: prefill "
                              f"{self.prefill.label()} vs decode {self.decode.label()}")
        self.bytes_per_token = kv_bytes_per_token(self.model, self.prefill.kv_cache_dtype)
        self.streams = min(self.prefill.tp, self.decode.tp)

    def transfer_s(self, prompt_tokens: int) -> float:
        """``T_x``: every layer's message of this prompt's KV, one after another."""
        t = self._memo.get(prompt_tokens)
        if t is None:
            layers = self.model.num_layers
            layer_bytes = self.bytes_per_token * prompt_tokens / layers
            t = layers * self.link.message_s(layer_bytes / self.streams)
            self._memo[prompt_tokens] = t
        return t

    def exposed_s(self, prompt_tokens: int, last_pass_s: float) -> float:
        """What the decode side waits for the KV after the prefill's last forward pass (of
        ``last_pass_s``) ended: the whole transfer without overlap, else the pipeline's tail."""
        total = self.transfer_s(prompt_tokens)
        if not self.overlap:
            return total
        layers = self.model.num_layers
        return max(total / layers, total - last_pass_s * (layers - 1) / layers)


__all__ = ["KvHandoff", "KvLink", "kv_bytes_per_token"]
