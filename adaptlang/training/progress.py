"""What a training run tells its user: the :class:`Reporter` interface and the ``Trainer`` callback feeding it.

Library code never prints. :func:`adaptlang.training.run.train` reports
through a :class:`Reporter` (every method a no-op here); ``adaptc train``
passes one that draws a progress bar and prints a line per epoch with rich.
Under ``torchrun`` only the main process (rank 0) reports: the others train
silently.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

__all__ = ["ReportCallback", "Reporter", "eval_metrics", "with_perplexity"]


class Reporter:
    """Receives a run's progress. Subclass it and override what you want to show."""

    def note(self, text: str) -> None:
        """A fact about the run (what was loaded, how many rows, where output goes)."""

    def warning(self, text: str) -> None:
        """Something the user should check (random weights, dropped rows)."""

    def evaluated(self, stage: str, metrics: dict[str, float]) -> None:
        """Evaluation results outside training: ``stage`` is ``"before"`` or ``"after"`` training."""

    def started(self, total_steps: int, done_steps: int, epochs: float) -> None:
        """Training begins: ``total_steps`` optimizer steps, ``done_steps`` already done (a resumed run)."""

    def step(self, step: int, total_steps: int) -> None:
        """Optimizer step ``step`` (1-based) of ``total_steps`` finished."""

    def epoch(self, epoch: float, step: int, loss: float | None, metrics: dict[str, float]) -> None:
        """An epoch (or logging interval) ended: the mean training loss since the last one, eval metrics if any."""

    def checkpoint(self, path: str) -> None:
        """A checkpoint was written."""

    def finished(self, steps: int, train_loss: float | None, seconds: float) -> None:
        """Training ended normally."""


def eval_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """The ``Trainer``'s ``eval_*`` metrics without the prefix and timing noise; perplexity from the loss.

    Perplexity is ``exp(loss)`` of the mean token cross-entropy (natural log), as language models report it.
    """
    skip = {"runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}
    out = {k.removeprefix("eval_"): float(v) for k, v in raw.items()
           if k.startswith("eval_") and k.removeprefix("eval_") not in skip and isinstance(v, (int, float))}
    return out


def with_perplexity(metrics: dict[str, float]) -> dict[str, float]:
    """Adds ``perplexity`` (``exp(loss)``, the loss capped at 700 so that it stays a finite float)."""
    if "loss" in metrics:
        metrics = dict(metrics, perplexity=math.exp(min(metrics["loss"], 700.0)))
    return metrics


class ReportCallback(TrainerCallback):
    """Turns ``Trainer`` events into :class:`Reporter` calls, on the main process only.

    Args:
        reporter: Where to report.
        perplexity: Add perplexity to evaluation metrics (language models).
    """

    def __init__(self, reporter: Reporter, perplexity: bool = False):
        self.reporter = reporter
        self.perplexity = perplexity
        self.training = False
        self.loss: float | None = None       # the last logged training loss, waiting for its evaluation
        self.expect_eval = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True
        self.expect_eval = str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "no"
        if state.is_world_process_zero:
            self.reporter.started(state.max_steps, state.global_step, float(args.num_train_epochs))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.reporter.step(state.global_step, state.max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not (self.training and state.is_world_process_zero and logs):
            return
        if "loss" in logs:
            self.loss = float(logs["loss"])
            if not self.expect_eval:
                self.reporter.epoch(float(state.epoch or 0), state.global_step, self.loss, {})
        elif any(k.startswith("eval_") for k in logs):
            metrics = eval_metrics(logs)
            self.reporter.epoch(float(state.epoch or 0), state.global_step, self.loss,
                                with_perplexity(metrics) if self.perplexity else metrics)
            self.loss = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.reporter.checkpoint(f"{args.output_dir}/checkpoint-{state.global_step}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False
