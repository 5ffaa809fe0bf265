"""Model, GPU and cluster catalogs: typed specs loaded from the shipped YAML plus user files.

Users extend a catalog with their own YAML in the same format (``--models FILE``, ``--gpus FILE``); a
clusters is given in short form (``4x8xH100``, ``2x8xH100+1x8xA100-80GB`` for mixed types) or as a YAML file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oserve.common.errors import ConfigError, InputFormatError
from oserve.common.yaml_io import safe_load

DEFAULT_INTER_NODE_GBPS = 50.0  # one 400 Gb/s InfiniBand NIC per GPU, as in a DGX H100
# The largest cluster the planner accepts. Planning cost no longer grows with the GPU count (bucketed
# packing and a budget-only feasibility test: 8,192 GPUs plan in about a second, bench/scale_bench.py),
# but a cluster is also materialised GPU by GPU; beyond this, plan several independent clusters.
MAX_CLUSTER_GPUS = 16384


class ModelSpec(BaseModel):
    """A decoder-only transformer's shape, as in its Hugging Face config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    ffn_size: int = Field(gt=0)
    gated_mlp: bool
    vocab_size: int = Field(gt=0)
    bytes_per_weight: float = Field(default=2.0, gt=0)
    max_context_tokens: int = Field(default=4096, gt=0)
    # Hugging Face's ``tie_word_embeddings``: the output projection reuses the input embedding, so the
    # vocabulary matrix is stored (and loaded, and moved in a switch) once, not twice.
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def layer_params(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attn = h * (h + 2 * kv) + h * h
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn_size
        return attn + mlp

    @property
    def num_params(self) -> int:
        embedding_copies = 1 if self.tie_word_embeddings else 2
        return self.num_layers * self.layer_params + embedding_copies * self.vocab_size * self.hidden_size

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.bytes_per_weight

    def kv_bytes_per_token_layer(self, kv_bytes: float = 2.0) -> float:
        """K and V of one token in one layer (all KV heads)."""
        return 2 * self.num_kv_heads * self.head_dim * kv_bytes


class StepModel(BaseModel):
    """A device's engine step time fitted as a whole (``oserve costmodel fit`` on ``step_*`` profile
    rows), for devices without an operator calibration such as a vLLM-CPU replica:
    ``step = step_overhead_s + prefill_s_per_token * prefill tokens + decode_s_per_seq * decode batch
    + prefill_attention_s_per_token2 * sum c (c + 2 p)`` over the step's prefill chunks (c new tokens
    after p cached ones: causal attention's pairs, twice; c^2 for a whole prompt), the term the operator
    model prices as attention work; 0 in a catalog fitted before it existed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_overhead_s: float = Field(ge=0)
    prefill_s_per_token: float = Field(ge=0)
    decode_s_per_seq: float = Field(ge=0)
    prefill_attention_s_per_token2: float = Field(default=0.0, ge=0)


class GpuSpec(BaseModel):
    """One accelerator type: datasheet compute, memory and intra-node link.

    A CPU replica is described in the same terms: ``hbm_gb`` is its share of host memory,
    ``kv_cache_gib`` the KV cache vLLM-CPU is given (``VLLM_CPU_KVCACHE_SPACE``, which replaces the
    utilisation-based KV budget), and ``step_model`` its fitted step times (which replace the roofline).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: tuple[str, ...] = ()
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float = Field(default=0.0, ge=0, description="dense FP8 peak; 0 = no FP8 tensor cores")
    int8_tops: float = Field(default=0.0, ge=0, description="dense INT8 peak; 0 = none")
    hbm_gb: float = Field(gt=0)
    hbm_gbps: float = Field(gt=0)
    intra_node_gbps: float = Field(gt=0)
    kv_cache_gib: float | None = Field(default=None, gt=0)
    step_model: StepModel | None = None

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * 1e9

    def peak_tflops(self, peak: str) -> float:
        """Dense tensor-core peak for ``bf16``, ``fp8`` or ``int8`` operands (0 when unsupported)."""
        return {"bf16": self.bf16_tflops, "fp8": self.fp8_tflops, "int8": self.int8_tops}[peak]


S = TypeVar("S", ModelSpec, GpuSpec)


class _Catalog(Generic[S]):
    """Name (or alias, case-insensitive) -> spec."""

    def __init__(self, kind: str, entries: dict[str, S]) -> None:
        self.kind = kind
        self._entries: dict[str, S] = entries

    def get(self, name: str) -> S:
        key = name.lower()
        if key not in self._entries:
            names = sorted({e.name for e in self._entries.values()})
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(names)}")
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted({e.name for e in self._entries.values()})


def _load_entries(path_or_name: Path | str, key: str, spec_cls: type[S],
                  text: str | None = None) -> list[S]:
    path = str(path_or_name)
    try:
        doc = safe_load(text if text is not None else Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalog file '{path}' does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputFormatError(path, mark.line + 1 if mark else None, None,
                               f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise InputFormatError(path, None, key, f"expected a top-level '{key}:' list")
    specs = []
    for i, raw in enumerate(doc[key]):
        try:
            specs.append(spec_cls.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            name = raw.get("name", f"#{i}") if isinstance(raw, dict) else f"#{i}"
            raise InputFormatError(path, None, f"{key}[{i}] ({name}).{field}", err["msg"]) from None
    return specs


def _index(specs: list[S]) -> dict[str, S]:
    out: dict[str, S] = {}
    for spec in specs:
        out[spec.name.lower()] = spec
        for alias in spec.aliases:
            out[alias.lower()] = spec
    return out


def _shipped(filename: str) -> tuple[str, str]:
    res = resources.files("oserve.data").joinpath(filename)
    return str(res), res.read_text()


def load_models(extra_files: list[str] | None = None) -> _Catalog[ModelSpec]:
    path, text = _shipped("models.yaml")
    specs = _load_entries(path, "models", ModelSpec, text)
    for f in extra_files or []:
        specs += _load_entries(f, "models", ModelSpec)
    return _Catalog("model", _index(specs))


def load_gpus(extra_files: list[str] | None = None) -> _Catalog[GpuSpec]:
    path, text = _shipped("gpus.yaml")
    specs = _load_entries(path, "gpus", GpuSpec, text)
    for f in extra_files or []:
        specs += _load_entries(f, "gpus", GpuSpec)
    return _Catalog("GPU type", _index(specs))


@dataclass(frozen=True)
class Gpu:
    gpu_id: int
    node_id: int
    gpu_type: str


@dataclass(frozen=True)
class NodeGroup:
    num_nodes: int
    gpus_per_node: int
    gpu: GpuSpec


@dataclass(frozen=True)
class ClusterSpec:
    """Nodes of GPUs. GPU ids are global, node by node; a node holds one GPU type."""

    groups: tuple[NodeGroup, ...]
    inter_node_gbps: float = DEFAULT_INTER_NODE_GBPS

    @cached_property
    def gpus(self) -> tuple[Gpu, ...]:
        out: list[Gpu] = []
        node = 0
        for g in self.groups:
            for _ in range(g.num_nodes):
                out += [Gpu(len(out) + i, node, g.gpu.name) for i in range(g.gpus_per_node)]
                node += 1
        return tuple(out)

    @property
    def num_gpus(self) -> int:
        return len(self.gpus)

    @cached_property
    def nodes(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {}
        for g in self.gpus:
            out.setdefault(g.node_id, []).append(g.gpu_id)
        return {k: tuple(v) for k, v in out.items()}

    def gpu_spec(self, gpu_type: str) -> GpuSpec:
        for g in self.groups:
            if g.gpu.name == gpu_type:
                return g.gpu
        raise ConfigError(f"cluster has no GPUs of type '{gpu_type}'")

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.gpu.name for g in self.groups))

    def describe(self) -> str:
        return "+".join(f"{g.num_nodes}x{g.gpus_per_node}x{g.gpu.name}" for g in self.groups)


_SHORT = re.compile(r"^(\d+)x(\d+)x([A-Za-z0-9_.\-]+)$")


def parse_cluster(spec: str, gpus: _Catalog[GpuSpec] | None = None) -> ClusterSpec:
    """Parse ``NODESxGPUSxTYPE[+...]`` or a YAML file with ``nodes: [{count, gpus_per_node, gpu}]``."""
    gpus = gpus or load_gpus()
    if Path(spec).suffix in (".yaml", ".yml"):
        return _cluster_from_yaml(Path(spec), gpus)
    groups = []
    for part in spec.split("+"):
        m = _SHORT.match(part.strip())
        if not m:
            raise ConfigError(f"cluster '{spec}': expected NODESxGPUS_PER_NODExGPU_TYPE, e.g. "
                              f"4x8xH100 (parts joined by '+'), got '{part}'")
        n_nodes, per_node = int(m.group(1)), int(m.group(2))
        if n_nodes < 1 or per_node < 1:
            raise ConfigError(f"cluster '{spec}': node and GPU counts must be >= 1")
        groups.append(NodeGroup(n_nodes, per_node, gpus.get(m.group(3))))
    _check_size(groups, f"cluster '{spec}'")
    return ClusterSpec(tuple(groups))


def _check_size(groups: list[NodeGroup], where: str) -> None:
    total = sum(g.num_nodes * g.gpus_per_node for g in groups)
    if total > MAX_CLUSTER_GPUS:
        raise ConfigError(f"{where} has {total:,} GPUs, beyond the planner's limit of {MAX_CLUSTER_GPUS:,} "
                          "(oserve.costmodel.catalog.MAX_CLUSTER_GPUS); plan it as several clusters")


def _cluster_from_yaml(path: Path, gpus: _Catalog[GpuSpec]) -> ClusterSpec:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"cluster file '{path}' does not exist") from None
    except yaml.YAMLError as exc:
        raise InputFormatError(str(path), None, None, f"invalid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise InputFormatError(str(path), None, "nodes", "expected a 'nodes:' list")
    groups = [_yaml_group(path, i, raw, gpus) for i, raw in enumerate(doc["nodes"])]
    if not groups:
        raise InputFormatError(str(path), None, "nodes", "the list is empty: a cluster needs nodes")
    _check_size(groups, f"cluster file '{path}'")
    inter = doc.get("inter_node_gbps", DEFAULT_INTER_NODE_GBPS)
    if isinstance(inter, bool) or not isinstance(inter, (int, float)) or not 0 < inter < float("inf"):
        raise InputFormatError(str(path), None, "inter_node_gbps",
                               f"must be a positive number, got {inter!r}")
    return ClusterSpec(tuple(groups), float(inter))


def _yaml_group(path: Path, i: int, raw: object, gpus: _Catalog[GpuSpec]) -> NodeGroup:
    """One ``nodes:`` entry; each count must be a whole number >= 1, named by field when it is not."""
    if not isinstance(raw, dict) or "gpu" not in raw or "gpus_per_node" not in raw:
        raise InputFormatError(str(path), None, f"nodes[{i}]", "needs gpu, gpus_per_node and optional count")
    unknown = sorted(set(raw) - {"gpu", "gpus_per_node", "count"})
    if unknown:
        raise InputFormatError(str(path), None, f"nodes[{i}].{unknown[0]}", "unknown key")
    counts = {}
    for key, value in (("count", raw.get("count", 1)), ("gpus_per_node", raw["gpus_per_node"])):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputFormatError(str(path), None, f"nodes[{i}].{key}", f"must be a whole number >= 1, "
                                   f"got {value!r}")
        counts[key] = value
    return NodeGroup(counts["count"], counts["gpus_per_node"], gpus.get(str(raw["gpu"])))
