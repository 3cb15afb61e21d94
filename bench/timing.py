"""Interleaved timing: every case once per round, rounds repeated, medians with their spread.

Cases that are compared run in the same rounds, in a rotating order, so a
slow spell on a shared machine hits all of them alike; ratios are taken per
round (paired) before the median, which cancels most of that drift.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Stats", "interleave", "paired_ratio", "stats"]


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements (seconds, or a unitless ratio).

    Attributes:
        median: The median.
        q1, q3: The lower and upper quartiles (the IQR is ``q3 - q1``).
        min, max: The extremes.
        n: How many samples.
    """

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "min": self.min, "max": self.max, "n": self.n}


def stats(samples: list[float]) -> Stats:
    """Returns the median, quartiles and extremes of ``samples``."""
    values = sorted(samples)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Stats(statistics.median(values), q1, q3, values[0], values[-1], len(values))


def paired_ratio(num: list[float], den: list[float]) -> Stats:
    """Returns the statistics of ``num[i] / den[i]`` (samples from the same rounds)."""
    return stats([a / b for a, b in zip(num, den)])


def interleave(cases: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1, inner: int = 1,
               sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Times every case once per round, ``rounds`` times, rotating the order each round.

    Args:
        cases: Name -> a callable doing one unit of work, or ``(setup, fn)``: ``fn(setup())`` with
            only ``fn`` timed (a fresh model to patch, say).
        rounds: Rounds (samples per case).
        warmup: Untimed rounds first.
        inner: Calls per sample (the sample is their mean), for sub-millisecond work.
        sync: Called before reading the clock (``torch.cuda.synchronize`` on a GPU).

    Returns:
        Name -> seconds per call, one sample per round.
    """
    sync = sync or (lambda: None)
    names = list(cases)
    calls = {name: _split(case) for name, case in cases.items()}
    for _ in range(warmup):
        for name in names:
            setup, fn = calls[name]
            fn(setup())
    samples: dict[str, list[float]] = {name: [] for name in names}
    was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                setup, fn = calls[name]
                state = setup()
                gc.collect()
                gc.disable()  # a collection inside a sample would be charged to whichever case triggered it
                sync()
                start = time.perf_counter()
                for _ in range(inner):
                    fn(state)
                sync()
                samples[name].append((time.perf_counter() - start) / inner)
                gc.enable()
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
    return samples


def _split(case: Any) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    """Returns ``(setup, fn)`` for a case given as a callable or a ``(setup, fn)`` pair."""
    if isinstance(case, tuple):
        return case
    return (lambda: None), (lambda _state: case())
