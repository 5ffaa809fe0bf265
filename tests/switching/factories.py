"""Factories for switching tests: replica configs and placed deployments."""

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.placement import pack

H100 = "H100-80GB"


def cfg(tp, pp=1):
    return ReplicaConfig(H100, tp, pp)


def placed(counts, cluster):
    return tuple(pack(counts, cluster))
