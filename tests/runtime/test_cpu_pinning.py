"""A process started on its replica's cores: its mask is set before the command runs a line, by the
parent while the child sleeps (``cpu_pinning``); a core it cannot have is refused before the command runs."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from oserve.runtime.cpu_pinning import process_state, start_pinned
from oserve.runtime.errors import EngineStartError

PRINT_MASK = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]


def run(argv, cores) -> str:
    async def scenario() -> str:
        process = await start_pinned(argv, cores, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        assert process.returncode == 0
        return out.decode().strip()

    return asyncio.run(scenario())


def test_the_command_runs_on_its_cores_from_its_first_line():
    core = max(os.sched_getaffinity(0))
    assert run(PRINT_MASK, (core,)) == f"[{core}]"


def test_without_cores_the_command_keeps_the_parents_mask():
    assert run(PRINT_MASK, ()) == str(sorted(os.sched_getaffinity(0)))


def test_a_core_the_process_cannot_have_is_refused_before_the_command_runs(tmp_path):
    marker = tmp_path / "ran"
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    with pytest.raises(EngineStartError, match=r"cannot confine .* to CPU cores \[4096\]"):
        asyncio.run(start_pinned(argv, (4096,)))
    assert not marker.exists()


def test_process_state_reads_the_kernel_state():
    assert process_state(os.getpid()) == "R"
    assert process_state(2**22 + 7) == "?"
