"""Runs a test function on several CPU processes joined in a gloo process group.

Usage, from a test module::

    from tests.distributed.launch import run_ranks

    def per_rank(fmt: str) -> dict:        # module level: the ranks import it by name
        rank = dist.get_rank()             # the group is already initialised (gloo)
        ...
        return {"bytes": 123}              # anything picklable

    def test_something():
        results = run_ranks(per_rank, world=2, timeout=60, args=("nf4",))
        assert results[0]["bytes"] == ...  # results[r] is rank r's return value

What :func:`run_ranks` guarantees:

* every rank runs ``fn(*args)`` in a fresh ``spawn``-ed process (no CUDA, no
  state inherited from the test process) with ``torch.distributed``
  initialised: backend ``gloo``, ``world`` ranks, one thread each (the CI
  machines have two cores);
* the ranks meet through a file store in a private temporary folder, not a
  TCP port, so parallel test runs cannot collide on a port;
* a hard deadline: a rank that hangs (a collective that one rank never
  joins, a deadlock) is killed after ``timeout`` seconds and the call raises
  :class:`RanksFailed`; collectives also time out inside the ranks after the
  same time, so a hang usually surfaces as a traceback first;
* a rank that raises makes the call raise :class:`RanksFailed` with that
  rank's traceback, and those of the ranks that fail with it (the ones still
  running after a 3 s grace are killed: they may wait on it forever).

``fn`` must be importable by the children: defined at module level (not a
lambda, a closure or a nested function) in a module they can import; the
children get the parent's ``sys.path``, so test modules pytest imported
(rootdir-relative or not) import the same way there.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

__all__ = ["RanksFailed", "run_ranks"]


class RanksFailed(AssertionError):
    """A rank raised, died, or did not finish in time; the message holds what each rank reported."""


def run_ranks(fn: Callable[..., Any], world: int = 2, timeout: float = 60.0, args: tuple[Any, ...] = ()) -> list[Any]:
    """Runs ``fn(*args)`` on ``world`` gloo ranks; returns each rank's return value, by rank.

    Args:
        fn: A module-level function; it runs with the default process group
            initialised (``dist.get_rank()``, ``dist.get_world_size()`` work).
        world: Number of processes.
        timeout: Seconds for the whole run, process start-up included (importing
            torch takes a few seconds per process on a small machine).
        args: Picklable positional arguments, the same for every rank.

    Returns:
        ``[result of rank 0, result of rank 1, ...]`` (each must be picklable).

    Raises:
        RanksFailed: A rank raised (its traceback is in the message), exited
            without a result, or the deadline passed (the ranks still running
            are killed).
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="adaptlang-ranks-") as tmp:
        folder = Path(tmp)
        procs = [ctx.Process(target=_rank_main, args=(fn, args, rank, world, str(folder), timeout), daemon=True)
                 for rank in range(world)]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        try:
            _wait(procs, folder, deadline)
        finally:
            for proc in procs:  # on any failure: nothing may outlive the call
                if proc.is_alive():
                    proc.kill()
                proc.join(5)
        return [_read(folder, rank)[1] for rank in range(world)]


def _wait(procs: list[Any], folder: Path, deadline: float) -> None:
    """Waits for every rank; raises as soon as one fails (the others may block on it) or time runs out.

    The message has every rank's failure, by rank, including ranks that fail
    within 3 s of the first one seen: when one rank raises, the others usually
    fail too (their peer left the group), and the first seen need not be the cause.
    """
    pending = set(range(len(procs)))
    while pending:
        for rank in sorted(pending):
            if not procs[rank].is_alive():
                pending.discard(rank)
        done = [rank for rank in range(len(procs)) if rank not in pending]
        if any(_read(folder, rank)[0] != "ok" for rank in done):
            # The others usually fail right after (their peer left): a moment to report them too.
            grace = min(deadline, time.monotonic() + 3)
            while any(procs[rank].is_alive() for rank in pending) and time.monotonic() < grace:
                time.sleep(0.05)
            failed = [(rank, _read(folder, rank)) for rank in range(len(procs))
                      if not procs[rank].is_alive() or (folder / f"rank{rank}.pkl").exists()]
            raise RanksFailed("\n".join(f"rank {rank} failed (exit code {procs[rank].exitcode}):\n{value}"
                                         for rank, (status, value) in failed if status != "ok"))
        if pending and time.monotonic() > deadline:
            raise RanksFailed(f"ranks {sorted(pending)} did not finish in time (a hang?); finished ranks: {done}")
        time.sleep(0.05)


def _read(folder: Path, rank: int) -> tuple[str, Any]:
    """Returns ``("ok", result)`` or ``("error", traceback text)`` as rank ``rank`` left it."""
    path = folder / f"rank{rank}.pkl"
    if not path.exists():
        return "error", "no result written (the process died: killed, out of memory, os._exit?)"
    with path.open("rb") as f:
        return pickle.load(f)  # written by our own child process just now


def _rank_main(fn: Callable[..., Any], args: tuple[Any, ...], rank: int, world: int, folder: str,
               timeout: float) -> None:
    """A child process: joins the group, runs ``fn``, writes ``(status, value)`` to ``rank{rank}.pkl``."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on two shared cores
    out = Path(folder) / f"rank{rank}.pkl"
    try:
        store = dist.FileStore(os.path.join(folder, "store"), world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent as text
        _write(out, ("error", traceback.format_exc()))
        return
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args))
    except BaseException:  # noqa: BLE001
        outcome = ("error", traceback.format_exc())
    # Written before leaving the group: leaving makes the peers' collectives fail at once, and the
    # parent must find this rank's own outcome (often the cause) when it sees theirs.
    _write(out, outcome)
    dist.destroy_process_group()


def _write(out: Path, outcome: tuple[str, Any]) -> None:
    """Writes ``outcome`` whole to ``out`` (then renamed: the parent never reads half a file)."""
    try:
        data = pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - an unpicklable result is the test's error, reported as such
        data = pickle.dumps(("error", "the rank's result cannot be pickled:\n" + traceback.format_exc()))
    partial = out.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(out)
