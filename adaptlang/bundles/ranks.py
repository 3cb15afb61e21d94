"""Writing once from a group of processes: rank 0 writes, every rank learns the outcome.

Used by ``save`` and ``export_peft`` on a sharded model, after the full
values were gathered collectively: every rank holds the same tensors, so one
writer suffices, and files written by several ranks into one (possibly
shared) folder would race. The other ranks wait in a collective until rank 0
is done, so no rank reads a bundle that is not written yet, and they raise
rank 0's error if it failed, so a failed save is a failure on every rank,
not only in rank 0's log.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

from adaptlang.errors import AdaptError, BundleError, Diagnostic

__all__ = ["on_rank_zero"]

T = TypeVar("T")


def on_rank_zero(write: Callable[[], T], elsewhere: T) -> T:
    """Runs ``write`` on rank 0 only; every rank waits for it and gets its outcome.

    Collective: every rank of the default process group must call it.

    Args:
        write: The writing job (run on rank 0).
        elsewhere: What the other ranks return (the paths ``write`` writes).

    Returns:
        ``write()``'s result on rank 0, ``elsewhere`` on the others.

    Raises:
        AdaptError: On rank 0, whatever ``write`` raised; on the others, a
            BundleError carrying its message.
    """
    rank = dist.get_rank()
    result, error, message = elsewhere, None, None
    if rank == 0:
        try:
            result = write()
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it before anyone raises
            error = exc
            message = str(exc) if isinstance(exc, AdaptError) else f"{type(exc).__name__}: {exc}"
    outcome: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcome, message)  # also the barrier: rank 0 has finished writing
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise BundleError(Diagnostic(f"rank 0 could not write the files: {outcome[0].splitlines()[0]}",
                                     notes=tuple(outcome[0].splitlines()[1:4])))
    return result

