"""``adaptc train``: train one task of a spec on a data file and write its bundle.

The work is :func:`adaptlang.training.run.train`; this module turns flags
into a :class:`~adaptlang.training.run.TrainConfig` and draws what the run
reports (:class:`RichReporter`): notes and a progress bar on stderr, a line
per epoch with the loss and the evaluation metric, and at the end the
metric before and after training and the bundle's path on stdout.

Under ``torchrun`` every process runs the command; only rank 0 draws.
Ctrl-C stops training: the last checkpoint stays, and the command says how
to continue from it (``--resume``); exit code 130.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from adaptlang.cli.output import plain
from adaptlang.errors import AdaptError, Diagnostic, UsageError

__all__ = ["RichReporter", "register", "train_command"]


def _format(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items()))


class RichReporter:
    """Draws a run's progress with rich (see :class:`adaptlang.training.progress.Reporter`).

    Args:
        console: Where progress goes (stderr).
        out: Where results go (stdout).
    """

    def __init__(self, console: Any, out: Any):
        self.console, self.out = console, out
        self.progress: Any = None
        self.bar: Any = None
        self.before: dict[str, float] | None = None
        self.last_checkpoint: str | None = None

    def note(self, text: str) -> None:
        self.console.print(plain(text, style="dim"))

    def warning(self, text: str) -> None:
        self.console.print(Text("warning: ", style="bold yellow") + plain(text))

    def evaluated(self, stage: str, metrics: dict[str, float]) -> None:
        if stage == "before":
            self.before = metrics
            self.console.print(Text(f"before training: {_format(metrics)}"))
            return
        for key in sorted(metrics):
            was = f"{self.before[key]:.4f} -> " if self.before and key in self.before else ""
            self.out.print(Text(f"eval {key}: {was}{metrics[key]:.4f}"))

    def started(self, total_steps: int, done_steps: int, epochs: float) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        if done_steps:
            self.note(f"resuming at step {done_steps} of {total_steps}")
        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.bar = self.progress.add_task("train", total=total_steps, completed=done_steps)

    def step(self, step: int, total_steps: int) -> None:
        if self.progress is not None:
            self.progress.update(self.bar, completed=step)

    def epoch(self, epoch: float, step: int, loss: float | None, metrics: dict[str, float]) -> None:
        parts = [f"epoch {epoch:g}", f"step {step}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if metrics:
            parts.append("eval " + _format(metrics))
        self.console.print(Text("  ".join(parts)))

    def checkpoint(self, path: str) -> None:
        self.last_checkpoint = path

    def finished(self, steps: int, train_loss: float | None, seconds: float) -> None:
        self.stop()
        loss = f", mean loss {train_loss:.4f}" if train_loss is not None else ""
        self.console.print(Text(f"trained {steps} steps in {seconds:.1f} s{loss}"))

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _pick_task(spec: Path, task: Optional[str]) -> str:
    """``--task``, or the spec's only task."""
    if task is not None:
        return task
    import adaptlang

    if not spec.is_file():
        raise UsageError(Diagnostic(f"no such spec file: {spec}", obj=str(spec)))
    tasks = list(adaptlang.parse(spec).tasks)
    if len(tasks) != 1:
        raise UsageError(Diagnostic(f"{spec} has {len(tasks)} tasks: name one with --task", obj="--task",
                                    notes=("tasks: " + ", ".join(tasks),)))
    return tasks[0]


def train_command(
    spec: Path = typer.Argument(..., help="The .adapt spec.", show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="A Hugging Face model folder, a hub id, a tiny-* preset, "
                              "or pkg.module:factory.", show_default=False),
    data: Path = typer.Option(..., "--data", help="Training data: .jsonl, .csv or .parquet.", show_default=False),
    out: str = typer.Option(..., "--out", help="Output folder: <task>.safetensors and checkpoints/.",
                            show_default=False),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="The task to train (default: the spec's only one)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Evaluation data (same format and fields)."),
    eval_split: Optional[float] = typer.Option(None, "--eval-split", help="Hold out this share of --data for "
                                               "evaluation instead (seeded)."),
    objective: Optional[str] = typer.Option(None, "--objective", help="classification, causal-lm or seq2seq "
                                            "(default: from the data's fields)."),
    head: Optional[str] = typer.Option(None, "--head", help="The model head (default: the objective's)."),
    num_labels: Optional[int] = typer.Option(None, "--num-labels", help="Classes (default: the distinct labels)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: the model's)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="Truncate rows to this many tokens "
                                             "(default: refuse rows longer than the model takes)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs (default 3)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per device and step (default 32)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Batches per optimizer step (default 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for deltas, new heads, shuffling, splits "
                                       "(default 0)."),
    warmup: Optional[float] = typer.Option(None, "--warmup", help="Warm-up: steps, or a share of them if < 1 "
                                           "(default 0)."),
    trainer_args: Optional[Path] = typer.Option(None, "--trainer-args", help="YAML/JSON of TrainingArguments "
                                                "fields; the flags above win over it."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT/checkpoints."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete OUT/checkpoints and start over."),
    text_field: str = typer.Option("text", "--text-field", help="Text column."),
    label_field: str = typer.Option("label", "--label-field", help="Label column (classification)."),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="Prompt column (causal LM)."),
    completion_field: str = typer.Option("completion", "--completion-field", help="Completion column (causal LM)."),
    source_field: str = typer.Option("source", "--source-field", help="Source column (seq2seq)."),
    target_field: str = typer.Option("target", "--target-field", help="Target column (seq2seq)."),
) -> None:
    """Train a task of SPEC on a data file with the Hugging Face Trainer; write OUT/<task>.safetensors."""
    from adaptlang.cli.output import error_console, output_folder, stdout_console
    from adaptlang.training.objective import Fields
    from adaptlang.training.progress import Reporter
    from adaptlang.training.run import TrainConfig, train

    config = TrainConfig(
        spec=spec, model=model, data=data, task=_pick_task(spec, task), out=output_folder(out, "--out"),
        eval_data=eval_data,
        eval_split=eval_split, objective=objective, head=head, num_labels=num_labels,
        fields=Fields(text_field, label_field, prompt_field, completion_field, source_field, target_field),
        tokenizer=tokenizer, max_length=max_length, epochs=epochs, lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, seed=seed, warmup=warmup, trainer_args=trainer_args, resume=resume,
        overwrite=overwrite)
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun: rank 0 alone draws
    reporter = RichReporter(error_console(), stdout_console()) if main else Reporter()
    try:
        result = train(config, reporter)
    except AdaptError as exc:
        if not main:  # torchrun: every rank meets the same error; rank 0 shows it once
            raise typer.Exit(exc.exit_code) from None
        raise
    except KeyboardInterrupt:
        if isinstance(reporter, RichReporter):
            reporter.stop()
            where = reporter.last_checkpoint
            error_console().print(Text(
                "interrupted: " + (f"the last checkpoint is {where}; continue with --resume" if where
                                   else "no checkpoint was written yet")))
        raise typer.Exit(130) from None
    finally:
        if isinstance(reporter, RichReporter):
            reporter.stop()
    if main:
        stdout_console().print(plain(f"wrote {result.bundle}"))


def register(app: typer.Typer) -> None:
    """Adds ``train``."""
    app.command("train")(train_command)
