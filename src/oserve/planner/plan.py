"""The result of planning: a deployment (replicas on GPUs) and the dispatch of request types to it.

A plan is saved as JSON (``oserve plan --json``) and read back by ``oserve simulate --plan`` and ``oserve
serve --plan``: ``Plan.load`` / ``Plan.from_dict`` validate that document (types, unknown keys, shapes)
and name the file and field of the first problem.

Each replica has a role (``ROLES``): ``colocated`` replicas prefill and decode their own requests (the
default, and what plans written before roles existed hold); a *disaggregated group* is the ``prefill``
and ``decode`` replicas sharing a ``group`` number: the dispatch sends a type's requests to the group's
prefill replicas, each prefilled sequence's KV cache is handed to one of the group's decode replicas,
which produces all its output tokens. Decode replicas therefore get no share of the dispatch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from oserve.common.errors import ConfigError, InputFormatError
from oserve.common.validation import first_error, one_of
from oserve.costmodel.precision import KV_FORMATS, WEIGHT_FORMATS
from oserve.costmodel.replica_config import ENGINE_DEFAULT, ReplicaConfig

COLOCATED, PREFILL, DECODE = "colocated", "prefill", "decode"
ROLES = (COLOCATED, PREFILL, DECODE)


@dataclass(frozen=True)
class Replica:
    """One model replica: the GPUs it runs on (global ids), its configuration and its role; a prefill or
    decode replica belongs to the disaggregated group ``group`` (None for a colocated one)."""

    replica_id: int
    gpus: tuple[int, ...]
    config: ReplicaConfig
    role: str = COLOCATED
    group: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"replica {self.replica_id}: role must be one of {', '.join(ROLES)}, "
                              f"got '{self.role}'")
        if (self.role == COLOCATED) != (self.group is None):
            raise ConfigError(f"replica {self.replica_id}: a {self.role} replica "
                              + ("has no group" if self.role == COLOCATED else "needs a group number"))

    @property
    def is_entry(self) -> bool:
        """Whether the dispatch sends requests here (every replica but a decode one)."""
        return self.role != DECODE

    def label(self) -> str:
        """The configuration's label, with the role and group of a disaggregated replica."""
        return self.config.label() + (f" {self.role}@g{self.group}" if self.group is not None else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the engine settings under vLLM's names, ``null`` for the engine's default."""
        return {"replica_id": self.replica_id, "role": self.role, "group": self.group,
                "gpus": list(self.gpus), "tp": self.config.tp,
                "pp": self.config.pp, "gpu_type": self.config.gpu_type,
                "precision": self.config.precision, "weight_format": self.config.weight_format,
                "kv_cache_dtype": self.config.kv_cache_dtype,
                "max_num_batched_tokens": self.config.max_num_batched_tokens or None,
                "max_num_seqs": self.config.max_num_seqs or None}


@dataclass(frozen=True)
class Plan:
    """A deployment plus how each request type's rate is split over its replicas.

    ``dispatch[t][r]`` is the fraction of type t's requests sent to replica r (each row sums to 1 for a
    type with traffic). ``capacity_rps[r][t]`` is what replica r could serve of type t alone.
    ``demand_scale`` is the largest factor by which the planned per-type rates can be multiplied and
    still be carried (max concurrent flow); ``utilisation[r]`` is replica r's load at the planned rates.
    """

    model: str
    replicas: tuple[Replica, ...]
    type_names: tuple[str, ...]
    type_rates_rps: tuple[float, ...]
    capacity_rps: tuple[tuple[float, ...], ...]
    dispatch: tuple[tuple[float, ...], ...]
    demand_scale: float
    utilisation: tuple[float, ...]
    bottlenecks: tuple[int, ...]
    planner: str
    planner_seconds: float = 0.0
    # SLO planning: the objective, the goodput scale the latency model predicts and, once the simulator
    # verified the plan, the one it measured (None under the throughput objective / unverified)
    objective: str = "throughput"
    predicted_goodput_scale: float | None = None
    simulated_goodput_scale: float | None = None
    # the cluster the GPU ids refer to (``ClusterSpec.describe()``); a disaggregated plan needs it to
    # price its KV hand-offs (which replicas share a node); None in plans written before
    cluster: str | None = None

    @property
    def num_gpus(self) -> int:
        return sum(r.config.num_gpus for r in self.replicas)

    def configs(self) -> list[ReplicaConfig]:
        return [r.config for r in self.replicas]

    @property
    def is_disaggregated(self) -> bool:
        return any(r.group is not None for r in self.replicas)

    def groups(self) -> dict[int, tuple[list[Replica], list[Replica]]]:
        """Each disaggregated group's (prefill replicas, decode replicas), by group number."""
        out: dict[int, tuple[list[Replica], list[Replica]]] = {}
        for r in self.replicas:
            if r.group is not None:
                out.setdefault(r.group, ([], []))[0 if r.role == PREFILL else 1].append(r)
        return dict(sorted(out.items()))

    def describe(self) -> str:
        """``2x[H100 TP1] + group(1x[H100 TP2] -> 3x[H100 TP1])``: colocated replicas, then each group
        as its prefill replicas -> its decode replicas."""
        parts = [_counted(r for r in self.replicas if r.group is None)]
        for prefill, decode in self.groups().values():
            parts.append(f"group({_counted(prefill)} -> {_counted(decode)})")
        return " + ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "planner": self.planner,
            "planner_seconds": self.planner_seconds,
            "deployment": self.describe(),
            "replicas": [r.to_dict() for r in self.replicas],
            "types": list(self.type_names),
            "type_rates_rps": list(self.type_rates_rps),
            "capacity_rps": [list(c) for c in self.capacity_rps],
            "dispatch": [list(d) for d in self.dispatch],
            "demand_scale": self.demand_scale,
            "utilisation": list(self.utilisation),
            "bottlenecks": list(self.bottlenecks),
            "objective": self.objective,
            "predicted_goodput_scale": self.predicted_goodput_scale,
            "simulated_goodput_scale": self.simulated_goodput_scale,
            "cluster": self.cluster,
        }

    @staticmethod
    def from_dict(d: object, source: str = "plan") -> Plan:
        """The plan of a ``to_dict`` document; ``InputFormatError`` naming ``source`` and the field."""
        if not isinstance(d, dict):
            raise InputFormatError(source, None, None, "expected a JSON object (as written by `oserve plan "
                                   f"--json`), got {type(d).__name__ if d is not None else 'null'}")
        try:
            doc = _PlanDoc.model_validate(d)
        except ValidationError as exc:
            field, _, problem = first_error(exc).partition(": ")
            raise InputFormatError(source, None, field, problem) from None
        shape = doc.shape_problem()
        if shape:
            raise InputFormatError(source, None, shape[0], shape[1])
        replicas = tuple(Replica(r.replica_id, tuple(r.gpus), _replica_config(r.model_dump()), r.role,
                                 r.group) for r in doc.replicas)
        return Plan(doc.model, replicas, tuple(doc.types), tuple(doc.type_rates_rps),
                    tuple(tuple(c) for c in doc.capacity_rps), tuple(tuple(x) for x in doc.dispatch),
                    doc.demand_scale, tuple(doc.utilisation), tuple(doc.bottlenecks), doc.planner,
                    doc.planner_seconds, doc.objective, doc.predicted_goodput_scale,
                    doc.simulated_goodput_scale, doc.cluster)

    @staticmethod
    def load(path: str | Path) -> Plan:
        """A plan JSON file, with one clear error for a missing file, a directory, bad JSON or content."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"plan '{path}' is a directory, not a plan JSON file")
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"plan file '{path}' does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read plan file '{path}': {exc}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFormatError(str(path), exc.lineno, None, f"invalid JSON: {exc.msg} "
                                   f"(column {exc.colno})") from None
        return Plan.from_dict(doc, str(path))


class _ReplicaDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    replica_id: int = Field(ge=0)
    # plans written before roles existed have neither field: colocated
    role: Annotated[str, AfterValidator(one_of(ROLES))] = COLOCATED
    group: int | None = Field(None, ge=0)
    gpus: list[int] = Field(min_length=1)
    tp: int = Field(ge=1)
    pp: int = Field(ge=1)
    gpu_type: str = Field(min_length=1)
    precision: str = "bf16"
    weight_format: Annotated[str, AfterValidator(one_of(WEIGHT_FORMATS))] = "bf16"
    kv_cache_dtype: Annotated[str, AfterValidator(one_of(KV_FORMATS))] = "bf16"


    # engine settings under vLLM's names; null or absent: the engine's default
    max_num_batched_tokens: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)


class _PlanDoc(BaseModel):
    """The JSON form of a plan; ``cluster``, ``trace``, ... are what ``oserve plan --json`` adds to it."""

    model_config = ConfigDict(extra="forbid")

    model: str
    planner: str
    replicas: list[_ReplicaDoc] = Field(min_length=1)
    types: list[str] = Field(min_length=1)
    type_rates_rps: list[float]
    capacity_rps: list[list[float]]
    dispatch: list[list[float]]
    demand_scale: float = Field(ge=0, allow_inf_nan=False)
    utilisation: list[float]
    bottlenecks: list[int]
    planner_seconds: float = Field(0.0, ge=0)
    objective: str = "throughput"
    predicted_goodput_scale: float | None = Field(None, ge=0)
    simulated_goodput_scale: float | None = Field(None, ge=0)
    cluster: str | None = None
    # written by `oserve plan --json` for people, not read back
    deployment: str | None = None
    trace: str | None = None
    requests_shortened: int | None = None
    online_mistype_rate: float | None = None
    uncalibrated: list[str] | None = None
    slo: str | None = None
    verification_requests: int | None = None
    shortlist: list[dict[str, Any]] | None = None
    confirmation: dict[str, Any] | None = None
    group_confirmation: dict[str, Any] | None = None

    def shape_problem(self) -> tuple[str, str] | None:
        """(field, problem) of the first inconsistency between the lists, or None."""
        num_r, num_t = len(self.replicas), len(self.types)
        for i, r in enumerate(self.replicas):
            if r.replica_id != i:
                return f"replicas[{i}].replica_id", f"expected {i} (replicas are numbered 0, 1, ... in order)"
            if len(r.gpus) != r.tp * r.pp:
                return f"replicas[{i}].gpus", f"TP{r.tp} PP{r.pp} needs {r.tp * r.pp} GPUs, got {len(r.gpus)}"
        if len(self.type_rates_rps) != num_t:
            return "type_rates_rps", f"expected {num_t} rates (one per type), got {len(self.type_rates_rps)}"
        if len(self.capacity_rps) != num_r or any(len(row) != num_t for row in self.capacity_rps):
            return "capacity_rps", f"expected {num_r} rows (replicas) of {num_t} capacities (types)"
        if len(self.dispatch) != num_t or any(len(row) != num_r for row in self.dispatch):
            return "dispatch", f"expected {num_t} rows (types) of {num_r} fractions (replicas)"
        for t, row in enumerate(self.dispatch):
            if any(not 0 <= x <= 1 for x in row) or (sum(row) > 0 and abs(sum(row) - 1) > 1e-3):
                return f"dispatch[{t}]", "fractions must be in [0, 1] and sum to 1 (or all be 0)"
        if len(self.utilisation) != num_r:
            return "utilisation", f"expected {num_r} values (one per replica), got {len(self.utilisation)}"
        if any(not 0 <= b < num_r for b in self.bottlenecks):
            return "bottlenecks", f"replica ids must be in 0..{num_r - 1}"
        return _group_problem(self.replicas, self.dispatch)


def _counted(replicas: Iterable[Replica]) -> str:
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r.config.label()] = counts.get(r.config.label(), 0) + 1
    return " + ".join(f"{n}x[{label}]" for label, n in sorted(counts.items()))


def _group_problem(replicas: list[_ReplicaDoc], dispatch: list[list[float]]) -> tuple[str, str] | None:
    """(field, problem) of the first inconsistency of roles and groups, or None."""
    members: dict[int, set[str]] = {}
    for i, r in enumerate(replicas):
        if (r.role == COLOCATED) != (r.group is None):
            return (f"replicas[{i}].group", "a colocated replica has no group (null)"
                    if r.role == COLOCATED else f"a {r.role} replica needs a group number")
        if r.group is not None:
            members.setdefault(r.group, set()).add(r.role)
        if r.role == DECODE and any(row[i] > 0 for row in dispatch):
            return f"dispatch (replica {i})", "a decode replica gets no share of the dispatch (its " \
                                              "group's prefill replicas hand it their sequences)"
    for g, roles in sorted(members.items()):
        if roles != {PREFILL, DECODE}:
            return "replicas", f"group {g} needs at least one prefill and one decode replica"
    return None


def _replica_config(r: dict[str, Any]) -> ReplicaConfig:
    precision = r.get("precision", "bf16")
    weight_format = r.get("weight_format", "bf16")
    if precision == "fp8":  # plans written before weight_format existed said fp8 weights this way
        precision, weight_format = "bf16", "fp8"
    return ReplicaConfig(r["gpu_type"], r["tp"], r["pp"], precision,
                         r.get("max_num_batched_tokens") or ENGINE_DEFAULT,
                         r.get("max_num_seqs") or ENGINE_DEFAULT,
                         weight_format=weight_format, kv_cache_dtype=r.get("kv_cache_dtype", "bf16"))


__all__ = ["COLOCATED", "DECODE", "PREFILL", "ROLES", "Plan", "Replica"]
