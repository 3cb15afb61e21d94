"""The multi-process launcher: results by rank, a rank's error with its traceback, a hang cut short."""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed.launch import RanksFailed, run_ranks

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def sum_ranks() -> tuple[int, int, int]:
    """Each rank: (rank, world size, the all-reduced sum of the ranks): the group really connects them."""
    total = torch.tensor([dist.get_rank()])
    dist.all_reduce(total)
    return dist.get_rank(), dist.get_world_size(), int(total)


def rank_one_fails() -> None:
    """Rank 1 raises; rank 0 then waits in a barrier rank 1 never reaches (it must be killed)."""
    if dist.get_rank() == 1:
        raise ValueError("rank one's own failure")
    dist.barrier()


def rank_one_hangs() -> None:
    """Rank 1 sleeps far past the deadline without touching the group."""
    if dist.get_rank() == 1:
        time.sleep(600)


def test_results_come_back_by_rank():
    assert run_ranks(sum_ranks, world=2, timeout=60) == [(0, 2, 1), (1, 2, 1)]


def test_a_failing_rank_raises_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(RanksFailed) as info:
        run_ranks(rank_one_fails, world=2, timeout=60)
    message = str(info.value)
    assert "rank 1 failed" in message
    assert "ValueError: rank one's own failure" in message and "rank_one_fails" in message
    assert time.monotonic() - start < 30  # not the whole timeout: rank 0 is killed, not waited for


def test_a_hang_fails_at_the_deadline():
    start = time.monotonic()
    # Rank 1 is still running at the deadline; rank 0 normally finished, unless start-up on a busy
    # machine took the whole deadline (then both are named): either way the call fails, on time.
    with pytest.raises(RanksFailed, match=r"ranks \[(0, )?1\] did not finish in time"):
        run_ranks(rank_one_hangs, world=2, timeout=10)
    assert time.monotonic() - start < 25  # the deadline, then killing and joining the ranks
