"""Starting a server process already confined to its replica's CPU cores (Linux).

A CPU replica's process tree must be born on its own cores rather than bind itself there later. Every
process of a vLLM-CPU replica (API server, engine core, worker) moves itself between cores while it
starts: ``import torch`` runs MKL's core count (``MKL_Read_ThreadENV_Count_Cores``), which pins the
process to each allowed core in turn (``sched_setaffinity`` to core 0, then core 1, then back), and the
worker's preloaded libgomp binds it to ``GOMP_CPU_AFFINITY`` before any Python runs. Started with the
whole machine's mask, a successor replica therefore pinned itself, among others, onto the cores of the
replica still serving, where that replica's worker was spinning, and in the full CI run its worker
stuck in the kernel inside that call (``affine_move_task``, runnable and never run) for good
(docs/runtime.md, "vLLM replicas"). A process whose inherited mask is already its own cores makes none
of these moves: MKL's probe and libgomp's bind find it where they would put it.

``pinned_argv`` prefixes a command with a few lines of Python that set the mask and ``exec`` the
command, so the server and every process it forks inherit it (``subprocess`` has no affinity option and
its ``preexec_fn`` is unsafe in a threaded program such as the gateway).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PIN_AND_EXEC = ("import os, sys; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
                "os.execvp(sys.argv[2], sys.argv[2:])")


def pinned_argv(argv: Sequence[str], cpu_cores: Sequence[int], python: str = sys.executable) -> list[str]:
    """``argv`` run with its CPU affinity set to ``cpu_cores`` from its first instruction (unchanged
    when no cores are given)."""
    if not cpu_cores:
        return list(argv)
    # -I -S: no site packages or environment hooks run before the mask is set
    return [python, "-I", "-S", "-c", PIN_AND_EXEC, ",".join(str(c) for c in cpu_cores), *argv]


__all__ = ["pinned_argv"]
