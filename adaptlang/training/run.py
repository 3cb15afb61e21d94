"""``adaptc train`` as a function: one task of a spec, trained on a data file with the Hugging Face ``Trainer``.

:func:`train` runs the whole job, checking cheap things before expensive
ones: the spec and task, then the data (fields, labels), then the arguments,
then the model (real weights), which the spec is applied to; then the rows
are tokenized, the ``Trainer`` trains (evaluating before, at every epoch and
after, when there is evaluation data), and the task's bundle is written to
``OUT/<task>.safetensors`` with a ``training`` record in its manifest.

Output folder::

    OUT/<task>.safetensors                 the trained task (written at the end, atomically)
    OUT/checkpoints/run.json               what a --resume must match
    OUT/checkpoints/checkpoint-N/          the Trainer's state + adaptlang/<task>.safetensors

The bundle is written to a temporary file renamed into place, so an
interrupted or failed run leaves the previous ``OUT/<task>.safetensors``
untouched; its checkpoints stay, and ``--resume`` continues from the last.

Distributed (``torchrun``): every process runs this function; the
``Trainer`` (through accelerate) wraps the model in DDP and splits the
batches; rank 0 alone reports, writes checkpoints and writes the bundle,
and the others wait for it (:func:`~adaptlang.bundles.ranks.on_rank_zero`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptlang.errors import Diagnostic, UsageError, did_you_mean
from adaptlang.training.objective import Fields
from adaptlang.training.progress import Reporter

__all__ = ["TrainConfig", "TrainResult", "train"]


@dataclass
class TrainConfig:
    """Everything ``adaptc train`` takes (``None``: the default, or the ``--trainer-args`` file's value).

    Attributes:
        spec: The ``.adapt`` file.
        model: ``--model``: a preset, a folder, a hub id or ``pkg.module:factory``.
        data: The training data (``.jsonl``, ``.csv``, ``.parquet``).
        task: The spec's task to train.
        out: The output folder.
        eval_data: ``--eval FILE``.
        eval_split: ``--eval-split``: hold out this fraction of ``data`` instead.
        objective: ``--objective`` (default: from the data's fields).
        head: ``--head``: the model head (default: the objective's).
        num_labels: ``--num-labels`` (classification).
        fields: The column names.
        tokenizer: ``--tokenizer DIR`` (default: the model's folder).
        max_length: Truncate rows to this many tokens (default: refuse rows the model cannot take).
        epochs, lr, batch_size, grad_accum, seed, warmup: Hyperparameter flags.
        trainer_args: A YAML/JSON file of ``TrainingArguments`` fields.
        resume: Continue from the last checkpoint in ``out/checkpoints``.
        overwrite: Delete earlier checkpoints in ``out/checkpoints`` and start over.
        callbacks: More ``TrainerCallback`` objects (Python API).
    """

    spec: Path
    model: str
    data: Path
    task: str
    out: Path
    eval_data: Path | None = None
    eval_split: float | None = None
    objective: str | None = None
    head: str | None = None
    num_labels: int | None = None
    fields: Fields = field(default_factory=Fields)
    tokenizer: Path | None = None
    max_length: int | None = None
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    seed: int | None = None
    warmup: float | None = None
    trainer_args: Path | None = None
    resume: bool = False
    overwrite: bool = False
    callbacks: list[Any] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a run left.

    Attributes:
        bundle: ``OUT/<task>.safetensors``.
        record: The manifest's training record.
        adapted: The handle of the trained model (in memory).
        tokenizer: Its tokenizer.
    """

    bundle: Path
    record: dict[str, Any]
    adapted: Any
    tokenizer: Any


def _check_task(spec_path: Path, task: str) -> Any:
    """Parses the spec and checks ``task`` is one of its tasks (before anything slow)."""
    import adaptlang

    if not Path(spec_path).is_file():
        raise UsageError(Diagnostic(f"no such spec file: {spec_path}", obj=str(spec_path)))
    spec = adaptlang.parse(Path(spec_path))
    if task not in spec.tasks:
        raise UsageError(Diagnostic(f"spec {spec_path} has no task '{task}'", obj=str(spec_path),
                                    hint=did_you_mean(task, spec.tasks) or "pass --task with one of its tasks",
                                    notes=("tasks: " + ", ".join(spec.tasks),)))
    return spec


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Trains ``config.task`` and writes its bundle (module docstring).

    Raises:
        UsageError: Bad arguments, a task the spec lacks, an unusable model
            or tokenizer, checkpoints in the way (exit code 2).
        DataError: Unusable data: empty, a missing field, mixed labels, rows
            the model cannot take (1).
        SpecError, BindError: A bad spec, or one whose selectors match
            nothing in the model; a task that leaves a new head untrained (1).
    """
    from adaptlang.training.prepare import prepare
    from adaptlang.training.quiet import quiet

    if reporter is None or int(os.environ.get("RANK", "0")) != 0:
        reporter = Reporter()  # torchrun: rank 0 alone reports (the others would say the same)
    spec = _check_task(config.spec, config.task)
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise UsageError(Diagnostic(f"--out {config.out} is a file, not a folder", obj=str(config.out),
                                    hint="--out names the folder for <task>.safetensors and checkpoints/"))
    with quiet():
        run = prepare(config, spec, reporter)
        return _run(config, run, reporter)


def _run(config: TrainConfig, run: Any, reporter: Reporter) -> TrainResult:
    """Trains with the prepared pieces, evaluates, writes the bundle."""
    import torch.distributed as dist

    from transformers import PrinterCallback

    from adaptlang.bundles.ranks import on_rank_zero
    from adaptlang.training.checkpoints import AdapterTrainer
    from adaptlang.training.progress import ReportCallback, eval_metrics, with_perplexity
    from adaptlang.training.record import read_before, training_record, write_before, write_run_identity

    lm = run.objective.name != "classification"
    trainer = AdapterTrainer(
        model=run.adapted.model, args=run.args, train_dataset=run.train.dataset,
        eval_dataset=run.eval.dataset if run.eval is not None else None, data_collator=run.collator,
        compute_metrics=None if lm else _accuracy, preprocess_logits_for_metrics=None if lm else _argmax,
        callbacks=[ReportCallback(reporter, perplexity=lm), *config.callbacks], adapted=run.adapted, task=config.task)
    main = trainer.is_world_process_zero()

    def metrics(raw: dict[str, Any]) -> dict[str, float]:
        found = eval_metrics(raw)
        return with_perplexity(found) if lm else found

    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the reporter shows them instead
    # Every process has looked at OUT/checkpoints (prepare) before rank 0 changes it.
    trainer.accelerator.wait_for_everyone()
    if main and run.resume_from is None:
        if config.overwrite and run.checkpoints.exists():
            shutil.rmtree(run.checkpoints)  # only now: a run refused earlier leaves them as they were
        write_run_identity(run.checkpoints, run.identity)
    before = None
    if run.eval is not None and run.resume_from is None:
        before = metrics(trainer.evaluate())
        if main:
            write_before(run.checkpoints, before)
            reporter.evaluated("before", before)
    elif run.eval is not None:
        before = read_before(run.checkpoints)  # the interrupted run's, so the record still shows before -> after
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=run.resume_from)
    seconds = time.perf_counter() - started
    after = None
    if run.eval is not None:
        logged = [h for h in trainer.state.log_history
                  if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        after = metrics(logged[-1] if logged else trainer.evaluate())
    train_loss = float(output.training_loss) if output.training_loss == output.training_loss else None
    if main:
        reporter.finished(trainer.state.global_step, train_loss, seconds)
        if after is not None:
            reporter.evaluated("after", after)
    record = training_record(
        objective=run.objective, model=run.pretrained, head=run.head, labels=run.labels, train=run.train_record,
        eval=run.eval_record, max_length=config.max_length, seed=run.seed, hyperparameters=run.hyperparameters,
        before=before, after=after, train_loss=train_loss, steps=trainer.state.global_step,
        epochs=float(trainer.state.epoch or 0.0), world_size=trainer.args.world_size,
        resumed_from=_step_of(run.resume_from))
    bundle = Path(config.out) / f"{config.task}.safetensors"

    def write() -> Path:
        return run.adapted.save(config.out, tasks=[config.task], training=record)[0]

    if dist.is_available() and dist.is_initialized():
        bundle = on_rank_zero(write, bundle)  # DDP: every rank holds the same values; rank 0 writes once
    else:
        bundle = write()
    return TrainResult(bundle, record, run.adapted, run.pretrained.tokenizer)


def _step_of(checkpoint: str | None) -> int | None:
    return None if checkpoint is None else int(Path(checkpoint).name.rpartition("-")[2])


def _argmax(logits: Any, labels: Any) -> Any:
    """Keeps the predicted class only (not every logit) while evaluating a classifier."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _accuracy(prediction: Any) -> dict[str, float]:
    """The share of evaluation rows whose predicted class is their label."""
    predicted, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((predicted == labels).mean())}
