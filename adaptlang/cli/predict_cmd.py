"""``adaptc predict``: run trained bundles over a data file; one JSON line per input row.

The work is :func:`adaptlang.training.predict.predict`; this module turns
flags into a :class:`~adaptlang.training.predict.PredictConfig`, draws a
progress bar on stderr when the results go to a file (``--out``; stdout then
carries one line saying where they went), and writes the JSON Lines: to
``--out`` atomically (a temporary file renamed into place, so a failed run
leaves an earlier file as it was), or else to stdout and nothing else there.
Notes (random preset weights, another model than the bundles were trained
on) go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text


__all__ = ["predict_command", "register"]


def predict_command(
    bundles: list[Path] = typer.Argument(..., help="Bundles (<task>.safetensors) to predict with.",
                                         show_default=False),
    model: str = typer.Option(..., "--model", "-m", help="The base model the bundles were trained on: a Hugging "
                              "Face folder, a hub id, a tiny-* preset, or pkg.module:factory.", show_default=False),
    data: Path = typer.Option(..., "--data", help="Rows to predict: .jsonl, .csv or .parquet.", show_default=False),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the JSON Lines here (atomically) "
                                      "instead of stdout (- is stdout)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="One task for every row (default: the only "
                                       "task loaded)."),
    task_field: Optional[str] = typer.Option(None, "--task-field", help="A column naming each row's task."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per forward."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation: most new tokens "
                                                 "per row [default: 32]."),
    num_beams: Optional[int] = typer.Option(None, "--num-beams", help="Generation: beam width [default: 1, "
                                            "greedy]."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate rows to this many tokens "
                                             "(default: as in training)."),
    head: Optional[str] = typer.Option(None, "--head", help="The model head, for bundles without a training "
                                       "record."),
    num_labels: Optional[int] = typer.Option(None, "--num-labels", help="Classes, for bundles without a training "
                                             "record."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: the model's)."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Text column (default: as in training)."),
    prompt_field: Optional[str] = typer.Option(None, "--prompt-field", help="Prompt column (causal LM; default: "
                                               "as in training)."),
    source_field: Optional[str] = typer.Option(None, "--source-field", help="Source column (seq2seq; default: "
                                               "as in training)."),
    id_field: str = typer.Option("id", "--id-field", help="A column copied into each result as 'id' when present."),
) -> None:
    """Predict every row of a data file with trained bundles; write one JSON line per row, in input order."""
    from adaptlang.cli.output import error_console, output_file, plain, stdout_console, write_output
    from adaptlang.training.predict import PredictConfig, predict, to_jsonl

    target = output_file(out, "--out") if out is not None else None  # before the (slow) run
    config = PredictConfig(
        model=model, bundles=list(bundles), data=data, task=task, task_field=task_field, head=head,
        num_labels=num_labels, tokenizer=tokenizer, text_field=text_field, prompt_field=prompt_field,
        source_field=source_field, id_field=id_field, max_length=max_length, batch_size=batch_size,
        max_new_tokens=max_new_tokens, num_beams=num_beams)
    console = error_console()
    bar = _Bar(console) if target is not None else None
    try:
        result = predict(config, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.stop()
    for note in result.notes:
        console.print(Text("warning: ", style="bold yellow") + plain(note))
    text = to_jsonl(result.rows)
    write_output(target, text, json=True)
    if target is None:
        return
    stdout_console().print(plain(f"wrote {len(result.rows)} predictions to {out}"))


class _Bar:
    """A rich progress bar over rows, started on the first update (after the model loaded)."""

    def __init__(self, console: Any):
        self.console = console
        self.progress: Any = None
        self.task: Any = None

    def update(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("predict", total=total)
        self.progress.update(self.task, completed=done)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def register(app: typer.Typer) -> None:
    """Adds ``predict``."""
    app.command("predict")(predict_command)
