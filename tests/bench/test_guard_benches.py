"""The guard benchmarks' helpers: running on a gateway's loop, the latency summary, the study's analysis.

The runs themselves need the embedded model and minutes of CPU (bench/results/guard/); these check the
pieces they are built from.
"""

from __future__ import annotations

import asyncio
import json

import pytest


async def _asgi_app(scope, receive, send):  # the smallest ASGI app a ServerThread can serve
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


def test_guard_bench_runs_coroutines_on_the_server_loop(bench_path):
    """The bench calibrates on the guarded server's event loop; it called ``ServerThread.call``, which
    was removed from the runtime, so every run died with AttributeError before its first request."""
    import guard_bench
    from oserve.runtime.server import ServerThread

    async def which_loop(x: int) -> tuple[asyncio.AbstractEventLoop, int]:
        return asyncio.get_running_loop(), 2 * x

    with ServerThread(_asgi_app) as srv:
        loop, value = guard_bench.on_loop(srv, which_loop(21), timeout_s=30)
        assert loop is srv.loop and value == 42


def test_guard_bench_summary_reports_per_request_latency(bench_path):
    import guard_bench

    score = {"has_secret": False, "reveals": False, "token_f1": 0.0, "common_words": 0}
    replayed = {"has_secret": False, "reveals": False, "detected": False}
    rows = [{"kind": "ordinary", "off_s": off_s, "on_s": on_s, "regenerated": regen, "off": score,
             "on": score, "replayed": replayed}
            for off_s, on_s, regen in ((1.0, 1.2, False), (2.0, 2.6, False), (1.0, 3.0, True))]
    s = guard_bench.summarize(rows, [{"calibration_s": 5.0}])["ordinary"]
    assert s["latency_ratio_p50"] == pytest.approx(1.3)  # the per-request ratios 1.2, 1.3, 3.0
    assert s["latency_ratio_p50_not_regenerated"] == pytest.approx(1.25)
    assert s["added_p50_s"] == pytest.approx(0.6)  # added seconds 0.2, 0.6, 2.0
    assert s["regeneration_rate"] == pytest.approx(1 / 3)


def test_study_folds_test_each_query_once_on_up_to_30_others(bench_path):
    from guard_study_analysis import NUM_FOLDS, fold_split

    for answered, cal_size in ((list(range(50)), 30), (list(range(40)), 30), (list(range(0, 50, 2)), 20)):
        tested = []
        for fold in range(NUM_FOLDS):
            test, cal = fold_split(fold, answered)
            assert not set(test) & set(cal) and len(cal) == cal_size and set(cal) <= set(answered)
            tested += test
        assert sorted(tested) == answered


def test_study_interval_and_reduction_bounds(bench_path):
    from guard_study_analysis import clopper_pearson, secret_reduction, upper_bound

    lo, hi = clopper_pearson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.03622, abs=1e-5)
    assert upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    lo, hi = clopper_pearson(8, 100)
    assert lo == pytest.approx(0.0352, abs=1e-4) and hi == pytest.approx(0.1516, abs=1e-4)
    # 0 of k leaks get through: the reduction's lower bound is about k/3, so a 10x claim needs k >= 29
    assert secret_reduction(29, 0)["reduction_lower_95"] > 10 > secret_reduction(28, 0)["reduction_lower_95"]
    assert secret_reduction(40, 2)["reduction"] == pytest.approx(20.0)
    assert secret_reduction(40, 2)["reduction_lower_95"] < 20.0
    assert secret_reduction(0, 0)["reduction_lower_95"] is None


def test_study_interleaved_rounds_spread_over_both_sets(bench_path):
    from guard_study import interleaved_plan
    from oserve.guard.question_sets import EXTRACTION_QUERIES, ORDINARY_QUESTIONS

    jobs = interleaved_plan([2, 3], 1.0)
    with_system = [j for j in jobs if j["system"]]
    assert len(with_system) == 2 * (len(EXTRACTION_QUERIES) + len(ORDINARY_QUESTIONS))
    assert len(jobs) - len(with_system) == len(EXTRACTION_QUERIES)  # each query's no-system answer once
    first = with_system[:2 * 18]  # a prefix: both prompts got the same queries, from both sets
    assert [j["q"] for j in first if j["prompt"] == 2] == [j["q"] for j in first if j["prompt"] == 3]
    assert {j["kind"] for j in first} == {"extraction", "ordinary"}
    half = interleaved_plan([2], 0.5)
    assert sorted({j["q"] for j in half if j["kind"] == "ordinary"}) == list(range(0, 40, 2))
    json.dumps(jobs)  # what collect writes
