"""Switching deployments: one control step (drift gate + cost-aware switch policy), replica
transitions, the timeline of a switch (shared by the price, the simulator and the server), weight transfer
plans with an LP lower bound, and KV-cache migration of requests in flight."""

from oserve.switching.control import ControlPolicy, ControlStep, control_step
from oserve.switching.goodput_price import GoodputPricer, default_slo_workload
from oserve.switching.io_profile import IoProfile
from oserve.switching.kv_migration import (
    Destination,
    InflightRequest,
    KvMigrationParams,
    KvMigrationPlan,
    plan_kv_migration,
)
from oserve.switching.links import STORAGE, LinkModel
from oserve.switching.policy import SwitchContext, SwitchDecision, SwitchParams, decide
from oserve.switching.replan_gate import GateDecision, ReplanConfig, drift, gate
from oserve.switching.shards import WeightLayout, layout_for
from oserve.switching.switch_schedule import (
    SwitchSchedule,
    finishes_in_drain,
    gpu_successors,
    switch_schedule,
)
from oserve.switching.transfer import TransferPlan, TransferProblem, plan_greedy, transfer_problem
from oserve.switching.transfer_bound import TransferBound, transfer_lower_bound
from oserve.switching.transition import Transition, counts_of, plan_transition, transition_to

__all__ = [
    "STORAGE",
    "ControlPolicy",
    "ControlStep",
    "Destination",
    "GateDecision",
    "GoodputPricer",
    "InflightRequest",
    "IoProfile",
    "KvMigrationParams",
    "KvMigrationPlan",
    "LinkModel",
    "ReplanConfig",
    "SwitchContext",
    "SwitchDecision",
    "SwitchParams",
    "SwitchSchedule",
    "Transition",
    "TransferBound",
    "TransferPlan",
    "TransferProblem",
    "WeightLayout",
    "control_step",
    "counts_of",
    "decide",
    "default_slo_workload",
    "drift",
    "finishes_in_drain",
    "gate",
    "gpu_successors",
    "layout_for",
    "plan_greedy",
    "plan_kv_migration",
    "plan_transition",
    "switch_schedule",
    "transfer_lower_bound",
    "transfer_problem",
    "transition_to",
]
