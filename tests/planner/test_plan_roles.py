"""Replica roles and disaggregated groups in plans: JSON round trip, validation, old files, rendering."""

from __future__ import annotations

import json

import pytest

from oserve.cli.plan_cmd import render
from oserve.common.errors import ConfigError, InputFormatError
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import DECODE, PREFILL, Plan, Replica


def disagg_plan() -> Plan:
    """r0 colocated; group 0: r1 (TP2) prefills for r2 and r3."""
    h1, h2 = ReplicaConfig("H100-80GB"), ReplicaConfig("H100-80GB", tp=2)
    replicas = (Replica(0, (0,), h1), Replica(1, (1, 2), h2, PREFILL, 0),
                Replica(2, (3,), h1, DECODE, 0), Replica(3, (4,), h1, DECODE, 0))
    return Plan("llama-3-8b", replicas, ("short", "long"), (2.0, 1.0), ((1.0, 1.0),) * 4,
                ((1.0, 0.0, 0.0, 0.0), (0.25, 0.75, 0.0, 0.0)), 1.0, (0.5,) * 4, (), "test")


def test_roles_and_groups_round_trip_through_json():
    plan = disagg_plan()
    doc = json.loads(json.dumps(plan.to_dict()))
    assert [r["role"] for r in doc["replicas"]] == ["colocated", "prefill", "decode", "decode"]
    assert Plan.from_dict(doc) == plan
    assert plan.is_disaggregated
    prefill, decode = plan.groups()[0]
    assert [r.replica_id for r in prefill] == [1] and [r.replica_id for r in decode] == [2, 3]
    assert plan.describe() == "1x[H100-80GB TP1] + group(1x[H100-80GB TP2] -> 2x[H100-80GB TP1])"


def test_a_plan_file_written_before_roles_loads_as_colocated():
    doc = disagg_plan().to_dict()
    doc["replicas"] = [doc["replicas"][0]]
    doc["capacity_rps"], doc["utilisation"] = doc["capacity_rps"][:1], doc["utilisation"][:1]
    doc["dispatch"] = [[1.0], [1.0]]
    for r in doc["replicas"]:
        del r["role"], r["group"]
    plan = Plan.from_dict(doc)
    assert plan.replicas[0].role == "colocated" and plan.replicas[0].group is None
    assert not plan.is_disaggregated and plan.groups() == {}


def _all_decode(doc: dict) -> None:
    for r in doc["replicas"][1:]:
        r["role"] = "decode"
    doc["dispatch"][1] = [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["replicas"][2].update(group=None), r"replicas\[2\]\.group"),
    (lambda d: d["replicas"][0].update(group=3), r"replicas\[0\]\.group"),
    (lambda d: d["replicas"][1].update(role="router"), r"replicas\.1\.role"),
    (lambda d: d["dispatch"][1].__setitem__(slice(None), [0.25, 0.5, 0.25, 0.0]), "decode replica"),
    (_all_decode, "group 0 needs at least one prefill"),
])
def test_inconsistent_roles_are_rejected_naming_the_field(edit, match):
    doc = disagg_plan().to_dict()
    edit(doc)
    with pytest.raises(InputFormatError, match=match):
        Plan.from_dict(doc, "p.json")


def test_replica_validates_its_role():
    with pytest.raises(ConfigError, match="needs a group"):
        Replica(0, (0,), ReplicaConfig("H100-80GB"), PREFILL)
    with pytest.raises(ConfigError, match="role must be one of"):
        Replica(0, (0,), ReplicaConfig("H100-80GB"), "both", 0)


def test_plan_rendering_shows_roles_and_groups():
    text = render(disagg_plan(), "1x8xH100-80GB", "t")
    assert "H100-80GB TP2 prefill@g0" in text
    assert "group 0: prefill on r1 hands its KV caches to decode on r2, r3" in text


def test_goodput_rendering_names_both_rechecks_and_their_baselines():
    from oserve.cli.plan_cmd import render_goodput
    from oserve.sim.verify import Confirmation, Verification
    from oserve.workload.slo import slo_from_flags

    plan = disagg_plan()
    colocated = Confirmation(2000, "4x[H100-80GB TP2]", 1.0, 1.05, True, 5, "2x[H100-80GB TP4]")
    group = Confirmation(2000, plan.describe(), 1.05, 1.09, False, 4, "4x[H100-80GB TP2]")
    text = render_goodput(plan, slo_from_flags("tight", None, None, None),
                          Verification(plan, (plan,), 1000, (None,), colocated, group))
    assert ("Best colocated plan re-checked on 2000 requests: 4x[H100-80GB TP2] at 1.05x against "
            "2x[H100-80GB TP4]'s 1.00x, confirmed") in text
    assert (f"Disaggregated winner re-checked on 2000 requests: {plan.describe()} at 1.09x against "
            "4x[H100-80GB TP2]'s 1.05x, not confirmed: the colocated choice stays") in text
