"""Replicas as Ray actors, each in its own placement group, so one gateway drives replicas on many hosts.

A replica with TP x PP GPUs gets a placement group of TP x PP bundles of one GPU each (packed on one node
when it fits: ``PACK``); on CPU-only clusters the bundles are CPU bundles. The actor builds the real
engine from an ``EngineSpec`` inside its own process and streams chunks back with Ray's streaming
generators. An actor that dies (node lost, process killed) surfaces as ``EngineDeadError``, which lets the
router retry a request that has no token yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from oserve.planner.plan import Replica
from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk, estimate_tokens
from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.errors import EngineDeadError, EngineStartError

if TYPE_CHECKING:
    from ray import ObjectRefGenerator
    from ray.actor import ActorHandle
    from ray.util.placement_group import PlacementGroup


@dataclass(frozen=True)
class RayPlacement:
    """How replicas are placed: GPU bundles (one per GPU of a replica) or CPU bundles."""

    use_gpus: bool = True
    cpus_per_bundle: float = 1.0
    strategy: str = "PACK"
    ready_timeout_s: float = 600.0

    def bundles(self, replica: Replica) -> list[dict[str, float]]:
        n = max(1, replica.config.num_gpus)
        if self.use_gpus:
            return [{"GPU": 1.0, "CPU": self.cpus_per_bundle} for _ in range(n)]
        return [{"CPU": self.cpus_per_bundle} for _ in range(n)]


def check_placement(replicas, placement: RayPlacement) -> None:
    """Refuse at start-up a plan whose bundles can never all be placed on this Ray cluster (a
    placement group that cannot be satisfied waits forever): the reason names what is missing."""
    import ray

    demand: dict[str, float] = {}
    for replica in replicas:
        for bundle in placement.bundles(replica):
            for resource, amount in bundle.items():
                demand[resource] = demand.get(resource, 0.0) + amount
    total = ray.cluster_resources()
    short = {r: (need, total.get(r, 0.0)) for r, need in demand.items() if need > total.get(r, 0.0)}
    if short:
        lacking = ", ".join(f"{need:g} {r} needed, {have:g} in the cluster"
                            for r, (need, have) in sorted(short.items()))
        raise EngineStartError(f"the plan's {len(replicas)} replicas cannot be placed on this Ray "
                               f"cluster ({lacking}); use fewer replicas or a larger cluster")


def disconnect() -> None:
    """Leave (or stop the local) Ray cluster; a no-op if Ray is not up."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join a Ray cluster (``address``) or start a local one; a no-op if Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    if address:
        # ray annotates logging_level as int, but takes level names too (its own default is "info")
        ray.init(address=address, include_dashboard=False,
                 logging_level="warning")  # type: ignore[arg-type]
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False,
                 logging_level="warning")  # type: ignore[arg-type]


class _EngineActor:
    """Runs inside the Ray actor: the real engine and a per-request chunk stream."""

    def __init__(self, spec: EngineSpec, replica: Replica) -> None:
        self.engine = spec.build(replica)

    async def start(self) -> dict:
        await self.engine.start()
        return {"name": self.engine.info.name, "context_tokens": self.engine.info.context_tokens}

    async def stop(self) -> None:
        await self.engine.stop()

    async def health(self) -> bool:
        return await self.engine.health()

    async def load(self) -> tuple[int, int]:
        load = self.engine.load()
        return load.num_running, load.num_waiting

    async def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    async def generate(self, request: GenerationRequest):
        async for chunk in self.engine.generate(request):
            yield chunk

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        from oserve.runtime.engine import ScoringError, supports_scoring

        engine: Any = self.engine
        if not supports_scoring(engine):
            raise ScoringError(f"engine {engine.info.name} cannot score")
        return await engine.log_likelihood(messages, continuation)

    def pid(self) -> int:
        import os

        return os.getpid()


class RayActorEngine:
    """Engine proxy on the gateway side of a replica that lives in a Ray actor."""

    def __init__(self, spec: EngineSpec, replica: Replica, placement: RayPlacement = RayPlacement()) -> None:
        self.spec = spec
        self.replica = replica
        self.placement = placement
        self.info = EngineInfo(name=f"ray:{spec.kind}-r{replica.replica_id}",
                               extra={"kind": "ray", "inner": spec.kind})
        self.actor: ActorHandle[_EngineActor] | None = None
        self._pg: PlacementGroup | None = None
        self._num_inflight = 0

    async def start(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if not ray.is_initialized():
            raise EngineStartError("Ray is not initialised: call oserve.runtime.ray_engine.connect()")
        pg = self._pg = placement_group(self.placement.bundles(self.replica),
                                        strategy=self.placement.strategy)
        try:
            await _with_timeout(pg.ready(), self.placement.ready_timeout_s)
        except Exception as exc:
            raise EngineStartError(f"placement group for replica {self.replica.replica_id} "
                                   f"({self.placement.bundles(self.replica)}) not ready within "
                                   f"{self.placement.ready_timeout_s:g} s ({type(exc).__name__}: "
                                   f"{exc or 'resources held by other work'})") from exc
        resources = self.placement.bundles(self.replica)[0]
        actor_cls = ray.remote(_EngineActor)
        # ray types .remote() on options() as "ActorHandle | the class"; on an actor class it is a handle
        actor = self.actor = cast("ActorHandle[_EngineActor]", actor_cls.options(
            num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0), max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0),
        ).remote(self.spec, self.replica))
        facts = await actor.start.remote()
        self.info.context_tokens = facts["context_tokens"]

    async def stop(self, timeout_s: float = 10.0) -> None:
        import asyncio

        import ray
        from ray.util.placement_group import remove_placement_group

        actor, self.actor = self.actor, None
        if actor is not None:
            try:  # a dead actor or a Ray that is shutting down must not hang the gateway's shutdown
                await asyncio.wait_for(asyncio.wrap_future(actor.stop.remote().future()), timeout_s)
            except Exception:  # noqa: BLE001 - best effort: the actor is killed next anyway
                pass
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._pg is not None:
            try:
                remove_placement_group(self._pg)
            except Exception:  # noqa: BLE001 - Ray itself may be gone at shutdown
                pass
            self._pg = None

    async def health(self) -> bool:
        import ray

        if self.actor is None:
            return False
        try:
            return bool(await self.actor.health.remote())
        except ray.exceptions.RayError:
            return False

    def load(self) -> EngineLoad:
        return EngineLoad(self._num_inflight, 0)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        import ray

        if self.actor is None:
            raise EngineDeadError(f"{self.info.name} is not running")
        self._num_inflight += 1
        try:
            stream: ObjectRefGenerator = self.actor.generate.options(num_returns="streaming").remote(request)
            async for ref in stream:
                yield await ref
        except ray.exceptions.RayActorError as exc:
            raise EngineDeadError(f"{self.info.name} actor died: {type(exc).__name__}") from exc
        finally:
            self._num_inflight -= 1

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Scoring runs in the actor, next to its engine (see ``ScoringEngine``)."""
        import ray

        if self.actor is None:
            raise EngineDeadError(f"{self.info.name} is not running")
        try:
            return tuple(await self.actor.log_likelihood.remote(messages, continuation))
        except ray.exceptions.RayActorError as exc:
            raise EngineDeadError(f"{self.info.name} actor died: {type(exc).__name__}") from exc
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None


async def _with_timeout(ref, timeout_s: float):
    import asyncio

    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)


__all__ = ["RayActorEngine", "RayPlacement", "check_placement", "connect", "disconnect"]
