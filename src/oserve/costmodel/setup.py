"""From names and files to a cluster, a model and the cost model the planner uses: one place, so that
``oserve plan``, ``oserve simulate`` and ``oserve serve --cluster`` resolve them the same way."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from oserve.costmodel.calibration import load_calibration
from oserve.costmodel.catalog import ClusterSpec, ModelSpec, load_gpus, load_models, parse_cluster
from oserve.costmodel.cost_model import DEFAULT_TPOT_SLO_S, CostModel


class CostModelConfig(BaseModel):
    """The cluster, the model and where their specs and calibration come from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: str = "2x8xH100"  # NODESxGPUSxTYPE[+...] or a cluster YAML file
    model: str = "llama-2-70b"
    model_catalogs: tuple[str, ...] = ()  # extra model catalog YAML files
    gpu_catalogs: tuple[str, ...] = ()
    calibration: str | None = None  # default: the shipped H100 fit
    plan_tpot_s: float = Field(DEFAULT_TPOT_SLO_S, ge=0, description="0 plans for raw throughput")

    def resolve(self) -> tuple[ClusterSpec, ModelSpec, CostModel]:
        gpus = load_gpus(list(self.gpu_catalogs))
        cluster = parse_cluster(self.cluster, gpus)
        model = load_models(list(self.model_catalogs)).get(self.model)
        cost = CostModel(model, load_calibration(self.calibration),
                         gpus={g.name: g for g in (gpus.get(n) for n in gpus.names())},
                         tpot_slo_s=self.plan_tpot_s if self.plan_tpot_s > 0 else None)
        return cluster, model, cost


__all__ = ["CostModelConfig"]
