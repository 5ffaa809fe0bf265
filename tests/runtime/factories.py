"""Factories for runtime tests: plans, fake-engine runtimes, a real uvicorn gateway, an openai client."""

from __future__ import annotations

import asyncio

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.fake_engine import FakeCost, FakeEngine
from oserve.runtime.serving import RuntimeConfig, ServingRuntime
from oserve.runtime.static_plan import static_plan

MODEL = "fake-model"
TYPE_NAMES = ("short", "long")


def make_plan(num_replicas: int = 2, dispatch=None, rates=(1.0, 1.0)):
    return static_plan(MODEL, [ReplicaConfig("cpu")] * num_replicas, TYPE_NAMES, dispatch, rates)


class FakeFleet:
    """Builds fake engines for a runtime and keeps them, so a test can kill one."""

    def __init__(self, cost: FakeCost = FakeCost(), context_tokens: int = 4096,
                 max_num_seqs: int = 256, clock=None) -> None:
        self.cost = cost
        self.context_tokens = context_tokens
        self.max_num_seqs = max_num_seqs
        self.clock = clock
        self.engines: list[FakeEngine] = []

    def __call__(self, replica) -> FakeEngine:
        engine = FakeEngine(f"fake-r{replica.replica_id}-{len(self.engines)}", self.cost,
                            max_num_seqs=self.max_num_seqs, context_tokens=self.context_tokens,
                            clock=self.clock)
        self.engines.append(engine)
        return engine


def split_by_length(prompt_tokens: int) -> int:
    """A stand-in online classifier: type 1 from 100 prompt tokens on."""
    return int(prompt_tokens >= 100)


def make_runtime(num_replicas: int = 2, cost: FakeCost = FakeCost(), dispatch=None,
                 config: RuntimeConfig = RuntimeConfig(), context_tokens: int = 4096,
                 clock=None, max_num_seqs: int = 256) -> tuple[ServingRuntime, FakeFleet]:
    """A runtime over fake replicas; with ``clock`` (e.g. a ``ManualClock``) the engines run on it too."""
    fleet = FakeFleet(cost, context_tokens, max_num_seqs, clock)
    runtime = ServingRuntime(MODEL, make_plan(num_replicas, dispatch), fleet, split_by_length,
                             config=config, clock=clock)
    return runtime, fleet


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until it waits again (on a ``ManualClock``, until it waits on time)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def run_clock(clock, until, step_s: float = 0.001, limit_s: float = 1000.0) -> None:
    """Advance a ``ManualClock`` in steps, letting tasks run between steps, until ``until()`` holds."""
    start_s = clock.now_s()
    while not until():
        if clock.now_s() - start_s > limit_s:
            raise AssertionError(f"condition not met within {limit_s:g} s of manual time")
        clock.advance(step_s)
        await settle()


def openai_client(server, **kwargs):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=30.0, **kwargs)
