"""Starting a server process already confined to its replica's CPU cores (Linux).

A CPU replica's process tree must be born on its own cores rather than move itself there. Every process
of a vLLM-CPU replica (API server, engine core, worker) changed its own CPU mask while it started:
``import torch`` runs MKL's core count (``MKL_Read_ThreadENV_Count_Cores``), which pins the process to
each allowed core in turn (``sched_setaffinity`` to core 0, then core 1, then back), and the worker's
preloaded libgomp binds it to ``GOMP_CPU_AFFINITY`` before any Python runs. Started with the whole
machine's mask, a successor replica therefore moved itself, among others, onto the cores of the replica
still serving, and in the full CI run its worker stuck for good in the kernel inside one of these calls
(``affine_move_task``: runnable and never run; docs/runtime.md, "vLLM replicas"). A process whose
inherited mask already is its replica's cores makes none of these moves: MKL's probe and libgomp's bind
find it where they would put it.

``start_pinned`` gives the child its mask without the child ever changing its own mask while it runs:
the command is started through a few lines of Python that report ready and block on a pipe; once the
child sleeps there, the parent sets its mask (for a sleeping task the kernel only records the mask, no
migration of a running task is needed), then releases it, and it wakes on its cores and ``exec``s the
command, which every process it forks inherits. (``subprocess`` has no affinity option, and its
``preexec_fn`` is unsafe in a threaded program such as the gateway.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oserve.runtime.errors import EngineStartError

# argv: READY_FD GO_FD COMMAND...; -I -S: nothing from site packages or the environment runs first
WAIT_THEN_EXEC = ("import os, sys; os.write(int(sys.argv[1]), b'r'); os.read(int(sys.argv[2]), 1); "
                  "os.execvp(sys.argv[3], sys.argv[3:])")
SLEEP_WAIT_S = 5.0  # how long the parent waits for the child to block before setting its mask anyway


def allowed_cpus() -> tuple[int, ...]:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset), in order; not
    ``os.cpu_count()``, which counts the machine's cores whether or not they are ours."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``S`` sleeping, ``R`` running, ...); ``?`` if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _wait_until_asleep(pid: int, ready_fd: int) -> None:
    """Blocks until the child has reported ready and sleeps on its pipe (or is gone, or time is up)."""
    if not os.read(ready_fd, 1):
        return  # it exited before reporting: the caller's health wait reports that
    deadline = time.monotonic() + SLEEP_WAIT_S
    while process_state(pid) not in ("S", "?") and time.monotonic() < deadline:
        time.sleep(0.002)


async def start_pinned(argv: Sequence[str], cpu_cores: Sequence[int], python: str = sys.executable,
                       **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec(*argv, **kwargs)`` with the child's CPU mask set to
    ``cpu_cores`` before it runs a line of the command (a plain start when no cores are given)."""
    if not cpu_cores:
        return await asyncio.create_subprocess_exec(*argv, **kwargs)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            python, "-I", "-S", "-c", WAIT_THEN_EXEC, str(ready_w), str(go_r), *argv,
            pass_fds=(ready_w, go_r), **kwargs)
        os.close(ready_w)
        os.close(go_r)
        ready_w = go_r = -1
        try:
            await asyncio.to_thread(_wait_until_asleep, process.pid, ready_r)
            os.sched_setaffinity(process.pid, set(cpu_cores))
        except ProcessLookupError:
            return process  # it exited first: the caller sees its exit code
        except BaseException as exc:
            # not yet the command, only the waiting trampoline: it must not go on unpinned
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            if isinstance(exc, OSError):
                raise EngineStartError(f"cannot confine '{argv[0]}' to CPU cores {list(cpu_cores)}: "
                                       f"{exc}") from None
            raise
        with contextlib.suppress(BrokenPipeError):
            os.write(go_w, b"g")
        return process
    finally:
        for fd in (ready_r, ready_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)

__all__ = ["process_state", "start_pinned"]
