"""The scaled clock: its time runs ``speed`` times faster than wall time, and so do its sleeps and timeouts
(what lets the server-vs-simulator test replay minutes of trace in seconds)."""

from __future__ import annotations

import asyncio
import time

import pytest

from oserve.runtime.clock import ScaledClock


def test_time_sleeps_and_timeouts_run_speed_times_faster():
    async def main():
        clock = ScaledClock(50.0)
        wall0, t0 = time.monotonic(), clock.now_s()
        await clock.sleep(5.0)  # 0.1 s of wall time
        slept = (clock.now_s() - t0, time.monotonic() - wall0)
        with pytest.raises(TimeoutError):
            async with clock.timeout(2.5):  # 0.05 s of wall time
                await asyncio.sleep(10.0)
        return slept, time.monotonic() - wall0

    (clock_s, wall_s), total_wall_s = asyncio.run(main())
    assert 5.0 <= clock_s and wall_s >= 0.1
    assert clock_s == pytest.approx(50.0 * wall_s, abs=0.05)  # two readings, microseconds apart
    assert total_wall_s < 5.0  # the timeout fired at its scaled deadline, not after 10 s


@pytest.mark.parametrize("speed", [0.0, -1.0, float("inf"), float("nan")])
def test_a_speed_that_is_not_positive_and_finite_is_refused(speed):
    with pytest.raises(ValueError, match="clock speed"):
        ScaledClock(speed)
