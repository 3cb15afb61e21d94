"""Everything a run needs before the ``Trainer`` starts, checked cheapest first.

The order is the user's: a typo in a field name or a bad ``--trainer-args``
file is reported before a model of several GB is read; the data's labels
decide the model's head before it is built; the spec is applied to the real
weights, and only then are the rows tokenized (the tokenizer comes with the
model) and their lengths checked against the model's positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptlang.errors import DataError, Diagnostic, UsageError, did_you_mean
from adaptlang.training.data import DataFile, check_text, drop_empty, read_data, require_fields, split_eval
from adaptlang.training.encode import Encoded, collator, encode
from adaptlang.training.objective import CLASSIFICATION, HEAD_OF, Labels, Objective, choose_objective, label_set
from adaptlang.training.progress import Reporter

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """The pieces of a run (see :func:`prepare`)."""

    objective: Objective
    head: str
    labels: Labels | None
    pretrained: Any
    adapted: Any
    args: Any
    hyperparameters: dict[str, Any]
    seed: int
    train: Encoded
    eval: Encoded | None
    train_record: dict[str, Any]
    eval_record: dict[str, Any] | None
    collator: Any
    checkpoints: Path
    resume_from: str | None
    identity: dict[str, Any]


def _objective(config: Any, train: DataFile) -> tuple[Objective, str]:
    """The objective (``--objective``, else the one ``--head`` trains, else the data's) and its head."""
    from adaptlang.plan.models import HEADS

    wanted = config.objective
    if config.head is not None:
        if config.head not in HEADS:
            raise UsageError(Diagnostic(f"unknown head '{config.head}'", obj="--head",
                                        hint=did_you_mean(config.head, HEADS) or "heads: " + ", ".join(HEADS)))
        trains = {head: name for name, head in HEAD_OF.items()}
        if config.head not in trains:
            raise UsageError(Diagnostic(f"--head {config.head} has no objective to train",
                                        obj="--head", hint="heads that train: " + ", ".join(trains)))
        if wanted is not None and trains[config.head] != wanted:
            raise UsageError(Diagnostic(
                f"--head {config.head} cannot train the {wanted} objective (it needs {HEAD_OF.get(wanted)})",
                obj="--head", hint="leave --head out: the objective picks its head"))
        wanted = trains[config.head]
    objective = choose_objective(train, config.fields, wanted)
    return objective, objective.head


def _rows(data: DataFile, objective: Objective) -> tuple[Any, int]:
    """The rows of ``data`` the objective can use: fields present and not empty, text fields as text."""
    require_fields(data, objective.fields)
    rows, dropped = drop_empty(data.dataset, list(objective.fields.values()))
    if len(rows) == 0:
        raise DataError(Diagnostic(f"every row of {data.path} has an empty field", obj=str(data.path),
                                   notes=("fields read: " + ", ".join(objective.fields.values()),)))
    for role, column in objective.fields.items():
        if role != "label":
            rows = check_text(data, rows, column)
    return rows, dropped


def _checkpoint_folder(config: Any, reporter: Reporter) -> tuple[Path, str | None]:
    """``OUT/checkpoints`` and the checkpoint to resume from (None: a fresh run)."""
    from adaptlang.training.checkpoints import last_checkpoint

    folder = Path(config.out) / "checkpoints"
    if config.resume and config.overwrite:
        raise UsageError(Diagnostic("--resume and --overwrite contradict each other", obj="--resume"))
    if config.resume:
        last, incomplete = last_checkpoint(folder, config.task) if folder.is_dir() else (None, [])
        if last is None:
            raise UsageError(Diagnostic(f"--resume: no complete checkpoint in {folder}", obj=str(folder),
                                        hint="run without --resume (and with --overwrite) to start training",
                                        notes=tuple(f"incomplete: {name}" for name in incomplete)))
        for name in incomplete:  # stopped while saving; the next save at that step writes it anew
            reporter.warning(f"skipping {folder / name}: incomplete (the run stopped while saving it)")
        return folder, last
    if folder.is_dir() and any(folder.iterdir()) and not config.overwrite:
        raise UsageError(Diagnostic(
            f"{folder} holds an earlier run's checkpoints", obj=str(folder),
            hint="pass --resume to continue it, or --overwrite to delete them and start over"))
    return folder, None  # --overwrite: the run deletes them once every check has passed


def _prompt_tokens(plan: dict[str, Any], task: str) -> int:
    """Soft-prompt positions the task puts in front of every row (they take model positions too)."""
    total = 0
    for term in plan["tasks"][task]["deltas"]:
        delta = plan["deltas"][term["name"]]
        if delta["kind"] == "prompt":
            total += sum(int(site["tokens"]) for site in delta["sites"])
    return total


def prepare(config: Any, spec: Any, reporter: Reporter) -> Prepared:
    """Reads and checks the data, builds the arguments, loads the model, applies the spec, tokenizes.

    Args:
        config: The :class:`~adaptlang.training.run.TrainConfig`.
        spec: The checked spec.
        reporter: Where notes go.

    Raises:
        As :func:`adaptlang.training.run.train`.
    """
    import adaptlang
    from adaptlang.training.arguments import read_trainer_args, training_arguments
    from adaptlang.training.pretrained import check_new_trained, load_pretrained, max_positions
    from adaptlang.training.record import check_run_identity, data_record, run_identity

    if config.eval_data is not None and config.eval_split is not None:
        raise UsageError(Diagnostic("--eval and --eval-split both given", obj="--eval",
                                    hint="evaluate on a file, or on a share of the training data, not both"))
    train_file = read_data(config.data)
    eval_file = read_data(config.eval_data) if config.eval_data is not None else None
    if eval_file is not None and eval_file.sha256 == train_file.sha256:
        reporter.warning(f"the evaluation data {eval_file.path} holds the same bytes as the training data: "
                         "its metrics measure fit to the training rows, not held-out performance")
    objective, head = _objective(config, train_file)
    train_rows, train_dropped = _rows(train_file, objective)
    eval_rows, eval_dropped = _rows(eval_file, objective) if eval_file is not None else (None, 0)
    labels = None
    if objective.name == CLASSIFICATION:
        parts = [(train_file, train_rows)] + ([(eval_file, eval_rows)] if eval_file is not None else [])
        labels = label_set(parts, objective.fields["label"], config.num_labels)
    elif config.num_labels is not None:
        raise UsageError(Diagnostic(f"--num-labels applies to classification, not {objective.name}",
                                    obj="--num-labels"))
    has_eval = eval_file is not None or config.eval_split is not None
    file_args = read_trainer_args(config.trainer_args) if config.trainer_args is not None else {}
    flags = {"epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size,
             "grad_accum": config.grad_accum, "seed": config.seed, "warmup": config.warmup}
    folder, resume_from = _checkpoint_folder(config, reporter)
    args, hyperparameters = training_arguments(folder, flags, file_args, has_eval=has_eval,
                                               loss_only=objective.name != CLASSIFICATION, file=config.trainer_args)
    seed = int(args.seed)
    split_dropped = train_dropped
    if config.eval_split is not None:
        train_rows, eval_rows = split_eval(train_rows, config.eval_split, seed)
        eval_file = train_file

    pretrained = load_pretrained(config.model, head, labels=labels, tokenizer=config.tokenizer, seed=seed)
    for text in pretrained.notes:
        (reporter.warning if pretrained.kind == "preset" else reporter.note)(text)
    labels = pretrained.labels  # a trained head's own label order, when it has one (see checkpoint_label_order)
    adapted = adaptlang.apply(pretrained.model, spec, task=config.task, seed=seed, tokenizer=pretrained.tokenizer)
    plan = adapted.plan.to_dict()
    check_new_trained(plan, config.task, pretrained.new_parameters, pretrained.name)

    limit = max_positions(pretrained.model, pretrained.tokenizer)
    prompt = _prompt_tokens(plan, config.task)
    note = f"{pretrained.name} has {limit} positions" + (f", {prompt} of them for the task's soft prompt"
                                                        if prompt else "")
    limit = None if limit is None else limit - prompt
    options = dict(labels=labels, max_length=config.max_length, limit=limit, limit_note=note)
    train = encode(train_file, train_rows, objective, pretrained.tokenizer, **options)
    evaluation = encode(eval_file, eval_rows, objective, pretrained.tokenizer, **options) \
        if eval_rows is not None else None

    split = config.eval_split
    train_record = data_record(train_file, len(train.dataset), split_dropped, train.truncated)
    eval_record = None
    if evaluation is not None:
        eval_record = data_record(eval_file, len(evaluation.dataset), eval_dropped if split is None else 0,
                                  evaluation.truncated, split)
    identity = run_identity(plan_sha256=adapted.plan.sha256, task=config.task, objective=objective,
                            train_sha256=train_file.sha256, eval_sha256=eval_file.sha256 if eval_file else None,
                            eval_split=split, labels=labels, max_length=config.max_length,
                            hyperparameters=hyperparameters)
    if resume_from is not None:
        check_run_identity(folder, identity)
    _report_data(reporter, train_record, eval_record, adapted, config.task)
    return Prepared(objective, head, labels, pretrained, adapted, args, hyperparameters, seed, train, evaluation,
                    train_record, eval_record, collator(objective, pretrained.tokenizer), folder, resume_from,
                    identity)


def _report_data(reporter: Reporter, train: dict[str, Any], evaluation: dict[str, Any] | None, adapted: Any,
                 task: str) -> None:
    """Notes on what trains on what."""
    trainable = sum(p.numel() for _, p in adapted.trainable_parameters())
    total = sum(p.numel() for p in adapted.model.parameters())
    reporter.note(f"task {task}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.3g}%)")
    for name, record in (("train", train), ("eval", evaluation)):
        if record is None:
            continue
        text = f"{name}: {record['used']:,} rows from {record['file']}"
        if record.get("split") is not None:
            text += f" (held out {record['split']:g} of it)"
        reporter.note(text)
        if record["dropped"]:
            reporter.warning(f"{name}: dropped {record['dropped']:,} rows with an empty field")
        if record["truncated"]:
            reporter.warning(f"{name}: truncated {record['truncated']:,} rows to --max-length")
