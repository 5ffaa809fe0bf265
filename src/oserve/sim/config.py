"""The simulator's configuration: one validated object, unknown keys rejected."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.sim.batching import BATCHING_MODES

CONTEXT_POLICIES = ("truncate", "drop")


class SimConfig(BaseModel):
    """How replicas batch, how the router dispatches, and how long a run may drain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batching: str = "chunked"
    dispatch: str = "least-outstanding"
    oracle_types: bool = Field(False, description="type requests by their true output length too")
    seed: int = 0
    drain_s: float = Field(600.0, gt=0, description="simulated time allowed after the last arrival")
    util_bin_s: float = Field(60.0, gt=0)
    max_num_seqs: int | None = Field(None, ge=1, description="default: the cost model's engine params")
    max_num_batched_tokens: int | None = Field(None, ge=1)
    watermark_frac: float = Field(0.01, ge=0, lt=1)
    context_policy: str = "truncate"

    @field_validator("batching")
    @classmethod
    def _batching(cls, v: str) -> str:
        if v not in BATCHING_MODES:
            raise ValueError(f"must be one of {BATCHING_MODES}")
        return v

    @field_validator("dispatch")
    @classmethod
    def _dispatch(cls, v: str) -> str:
        if v not in DISPATCH_POLICIES:
            raise ValueError(f"must be one of {DISPATCH_POLICIES}")
        return v

    @field_validator("context_policy")
    @classmethod
    def _context(cls, v: str) -> str:
        if v not in CONTEXT_POLICIES:
            raise ValueError(f"must be one of {CONTEXT_POLICIES}")
        return v
