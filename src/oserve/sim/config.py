"""The simulator's configuration: one validated object, unknown keys rejected."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from oserve.common.validation import one_of
from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.sim.batching import BATCHING_MODES

CONTEXT_POLICIES = ("truncate", "drop")


class SimConfig(BaseModel):
    """How replicas batch, how the router dispatches, and how long a run may drain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batching: Annotated[str, AfterValidator(one_of(BATCHING_MODES))] = "chunked"
    dispatch: Annotated[str, AfterValidator(one_of(DISPATCH_POLICIES))] = "least-outstanding"
    oracle_types: bool = Field(False, description="type requests by their true output length too")
    seed: int = 0
    drain_s: float = Field(600.0, gt=0, description="simulated time allowed after the last arrival")
    util_bin_s: float = Field(60.0, gt=0)
    max_num_seqs: int | None = Field(None, ge=1, description="default: the cost model's engine params")
    max_num_batched_tokens: int | None = Field(None, ge=1)
    watermark_frac: float = Field(0.01, ge=0, lt=1)
    context_policy: Annotated[str, AfterValidator(one_of(CONTEXT_POLICIES))] = "truncate"



