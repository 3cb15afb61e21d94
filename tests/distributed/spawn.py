"""A small launcher for multi-process tests: ``run_ranks(fn, world, *args)`` (CPU, gloo).

Each rank is a fresh process (``spawn``: nothing of the test process's
state, threads or process group is inherited), joins a gloo process group
on a free local port, and calls ``fn(rank, world, *args)``; ``fn`` must be
a module-level function (it is pickled by name). A rank that raises fails
the test with that rank's traceback (the others are stopped); a run that
outlives ``timeout`` (a hung collective) is killed and fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_ranks"]


def free_port() -> int:
    """A TCP port free now on 127.0.0.1 (the OS picks it; taken again by rank 0 right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, fn: Callable[..., None], world: int, port: int, args: tuple[Any, ...]) -> None:
    """One rank: join the group, run ``fn``, leave the group (also when ``fn`` raised)."""
    torch.set_num_threads(1)  # two shared cores: ranks must not fight for threads
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., None], world: int, *args: Any, timeout: float = 90.0) -> float:
    """Runs ``fn(rank, world, *args)`` on ``world`` processes; returns the seconds it took.

    Raises:
        pytest.fail.Exception: A rank failed (its traceback in the message) or
            the run took longer than ``timeout`` seconds (every rank is killed).
    """
    start = time.monotonic()
    context = mp.start_processes(_rank, args=(fn, world, free_port(), args), nprocs=world, join=False,
                                 start_method="spawn")
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() - start > timeout:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                pytest.fail(f"{fn.__name__} on {world} ranks did not finish in {timeout:.0f} s (killed)")
    except mp.ProcessRaisedException as exc:  # the failing rank's traceback is in the message
        pytest.fail(f"{fn.__name__}: rank {exc.error_index} raised:\n{exc}")
    except mp.ProcessExitedException as exc:
        pytest.fail(f"{fn.__name__}: rank {exc.error_index} exited with code {exc.exit_code}")
    return time.monotonic() - start
