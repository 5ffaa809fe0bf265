"""KV hand-off of disaggregation: bytes per token, link choice, transfer time and layer-wise overlap."""

from __future__ import annotations

import pytest

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.kv_transfer import KvHandoff, KvLink, kv_bytes_per_token
from oserve.costmodel.replica_config import ReplicaConfig

LLAMA8B = load_models().get("llama-3-8b")
H1 = ReplicaConfig("H100-80GB")
NVLINK = KvLink(True, 450.0)
NETWORK = KvLink(False, 450.0, 50.0)


def test_kv_bytes_per_token_of_llama_3_8b():
    # 32 layers x (K, V) x 8 KV heads x 128 dims x 2 bytes = 128 KiB
    assert kv_bytes_per_token(LLAMA8B) == 32 * 2 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token(LLAMA8B, "fp8") == 65536
    # int8 carries an fp16 scale and zero (4 bytes) per token per head: 1 + 4/128 bytes per value
    assert kv_bytes_per_token(LLAMA8B, "int8") == pytest.approx(32 * 2 * 8 * 128 * (1 + 4 / 128))


def test_link_between_replicas_follows_the_nodes():
    cluster = parse_cluster("2x8xH100-80GB")
    assert KvLink.between(cluster, (0, 1), (2,)).same_node
    cross = KvLink.between(cluster, (7,), (8,))
    assert not cross.same_node and cross.inter_node_gbps == cluster.inter_node_gbps
    with pytest.raises(ConfigError, match="GPU 16 is not in cluster"):
        KvLink.between(cluster, (0,), (16,))


def test_long_prompt_transfer_runs_at_the_measured_link_bandwidths():
    """8192 tokens = 1.07 GB: the measured H100 send/recv profiles move 1 GB at ~366 GB/s on NVLink and
    ~33 GB/s across nodes (per GPU pair): a few ms in a node, ~30 ms across."""
    size = 8192 * 131072
    nv = KvHandoff(LLAMA8B, H1, H1, NVLINK).transfer_s(8192)
    net = KvHandoff(LLAMA8B, H1, H1, NETWORK).transfer_s(8192)
    assert 250e9 < size / nv < 450e9
    assert 25e9 < size / net < 45e9
    # a network half as fast takes twice as long
    slow = KvHandoff(LLAMA8B, H1, H1, KvLink(False, 450.0, 25.0)).transfer_s(8192)
    assert slow == pytest.approx(2 * net)


def test_short_prompt_transfer_is_latency_bound():
    """16 tokens: 32 messages of 64 KiB, each near the profile's ~20 us latency floor."""
    t = KvHandoff(LLAMA8B, H1, H1, NETWORK).transfer_s(16)
    assert 32 * 10e-6 < t < 32 * 60e-6


def test_tensor_parallel_replicas_split_each_layer_over_parallel_links():
    tp2 = ReplicaConfig("H100-80GB", tp=2)
    one = KvHandoff(LLAMA8B, H1, H1, NETWORK).transfer_s(8192)
    two = KvHandoff(LLAMA8B, tp2, tp2, NETWORK).transfer_s(8192)
    mixed = KvHandoff(LLAMA8B, tp2, H1, NETWORK).transfer_s(8192)  # the TP1 side's one link bounds it
    assert two == pytest.approx(one / 2, rel=0.15)
    assert mixed == one


def test_layer_wise_overlap_hides_the_transfer_behind_the_last_pass():
    h = KvHandoff(LLAMA8B, H1, H1, NETWORK)
    total = h.transfer_s(4096)
    layers = 32
    assert h.exposed_s(4096, 0.0) == pytest.approx(total)  # nothing to overlap with
    assert h.exposed_s(4096, total / 2) == pytest.approx(total * (1 - 31 / 64))  # x > c
    assert h.exposed_s(4096, total) == pytest.approx(total / layers)  # x == c: the last layer's message
    assert h.exposed_s(4096, 10 * total) == pytest.approx(total / layers)  # compute-bound: one message
    no_overlap = KvHandoff(LLAMA8B, H1, H1, NETWORK, overlap=False)
    assert no_overlap.exposed_s(4096, 10 * total) == pytest.approx(total)


def test_a_group_needs_one_kv_cache_dtype():
    with pytest.raises(ConfigError, match="one KV cache dtype"):
        KvHandoff(LLAMA8B, H1, ReplicaConfig("H100-80GB", kv_cache_dtype="fp8"), NVLINK)
