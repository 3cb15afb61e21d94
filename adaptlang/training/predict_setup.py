"""What ``adaptc predict`` needs to know before it loads a model: each task's objective, labels and input field, and each row's task.

A bundle made by ``adaptc train`` carries a ``training`` record
(:mod:`adaptlang.bundles.training_record`): the objective and head the task
was trained with, the classification labels in id order, the columns read and
``--max-length``. :func:`read_setup` reads those records from the bundles'
manifests alone (no tensor data, no model) and checks that the bundles can
share one model: one head, and for classification one number of labels
(each task keeps its own label *names*: its ``tune`` delta carries its own
classifier). A bundle without a record (saved from Python after the user's
own loop) needs ``--head`` (and ``--num-labels`` for classification); its
labels are then the class ids ``0 .. n-1``.

Each task reads one input column (its *role*): ``text`` for classification
and a causal LM trained on text, ``prompt`` for a causal LM trained on
prompt/completion pairs, ``source`` for seq2seq; by default the column the
record says it was trained on, or the one ``--text-field`` / ``--prompt-field``
/ ``--source-field`` names.

:func:`row_tasks` gives each row its task (``--task``, ``--task-field`` or
the only task), :func:`row_texts` each row's input text; every problem names
the row (rows count from 1 in file order, as in training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptlang.errors import DataError, Diagnostic, UsageError, did_you_mean
from adaptlang.training.data import ROW, DataFile, check_text, require_fields
from adaptlang.training.objective import CLASSIFICATION, HEAD_OF, SEQ2SEQ

__all__ = ["Setup", "TaskInfo", "read_setup", "row_tasks", "row_texts"]


@dataclass(frozen=True)
class TaskInfo:
    """One loaded task, as its bundle describes it.

    Attributes:
        task: The task's name.
        bundle: Its bundle file.
        labels: Classification: id -> label as in the training data; else None.
        role: The input role it reads (``text``, ``prompt`` or ``source``).
        field: The column holding that input.
        max_length: Rows are truncated to this many tokens (the record's
            ``--max-length``, or ``predict``'s); None: refuse longer rows.
        model: The model name the record says it was trained on (None without a record).
        seed: The training run's seed (rebuilds a ``tiny-*`` preset's random base the same way).
    """

    task: str
    bundle: Path
    labels: tuple[Any, ...] | None
    role: str
    field: str
    max_length: int | None
    model: str | None
    seed: int


@dataclass(frozen=True)
class Setup:
    """What the bundles agree on, and each task.

    Attributes:
        objective: ``classification``, ``causal-lm`` or ``seq2seq``.
        head: The model head (a key of :data:`adaptlang.plan.models.HEADS`).
        tasks: Task name -> :class:`TaskInfo`, in bundle order.
    """

    objective: str
    head: str
    tasks: dict[str, TaskInfo]

    @property
    def num_labels(self) -> int | None:
        """The classification head's size (every task has as many labels), or None."""
        first = next(iter(self.tasks.values()))
        return len(first.labels) if first.labels is not None else None


def _role(objective: str, completion_only: bool, prompt_override: bool) -> str:
    if objective == CLASSIFICATION:
        return "text"
    if objective == SEQ2SEQ:
        return "source"
    return "prompt" if completion_only or prompt_override else "text"


def read_setup(bundles: list[Path], *, head: str | None = None, num_labels: int | None = None,
               fields: dict[str, str | None] | None = None, max_length: int | None = None) -> Setup:
    """Reads the bundles' manifests and training records into a :class:`Setup`.

    Args:
        bundles: The bundle files.
        head: ``--head``: for bundles without a training record (must agree with those that have one).
        num_labels: ``--num-labels``: the same, for classification.
        fields: ``{"text" | "prompt" | "source": column}`` overrides (None: the record's).
        max_length: ``--max-length``: overrides every record's.

    Raises:
        BundleError: A missing or malformed bundle (from the bundle layer).
        UsageError: No bundle; a bundle without a record and no ``--head``
            (or ``--num-labels``); flags that contradict a record; bundles
            trained with different heads or numbers of labels; a task twice.
    """
    from adaptlang.bundles.bundle import read_manifest
    from adaptlang.plan.models import HEADS

    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if not bundles:
        raise UsageError(Diagnostic("no bundle to predict with", obj="BUNDLE", hint="give one or more .safetensors"))
    if head is not None and head not in HEADS:
        raise UsageError(Diagnostic(f"unknown head '{head}'", obj="--head",
                                    hint=did_you_mean(head, HEADS) or "heads: " + ", ".join(HEADS)))
    if num_labels is not None and num_labels < 2:  # one output: its softmax is 1 whatever the row
        raise UsageError(Diagnostic(f"--num-labels must be at least 2, not {num_labels}", obj="--num-labels",
                                    hint="classification tells 2 or more classes apart"))
    objectives = {h: o for o, h in HEAD_OF.items()}
    tasks: dict[str, TaskInfo] = {}
    heads: dict[str, Path] = {}
    for path in map(Path, bundles):
        manifest = read_manifest(path)
        task, record = manifest["task"], manifest.get("training")
        if task in tasks:
            raise UsageError(Diagnostic(f"task '{task}' is in two bundles: {tasks[task].bundle} and {path}",
                                        obj=str(path), hint="give one of them"))
        if record is not None:
            trained_head = record["model"]["head"] or HEAD_OF[record["objective"]]
            objective, completion_only = record["objective"], bool(record["completion_only"])
            if head is not None and head != trained_head:
                raise UsageError(Diagnostic(f"--head {head}, but {path} was trained with the {trained_head} head",
                                            obj="--head", hint="leave --head out: the training record gives it"))
            labels = tuple(record["labels"]) if record.get("labels") is not None else None
            if labels is not None and num_labels is not None and num_labels != len(labels):
                raise UsageError(Diagnostic(
                    f"--num-labels {num_labels}, but {path} was trained with {len(labels)} labels", obj="--num-labels",
                    hint="leave --num-labels out: the training record gives the labels",
                    notes=("labels: " + ", ".join(map(repr, labels)),)))
            recorded, length, model, seed = record["fields"], record["max_length"], record["model"]["name"], \
                int(record["seed"])
        else:
            if head is None:
                raise UsageError(Diagnostic(
                    f"{path} has no training record (it was not made by adaptc train): the model's head is unknown",
                    obj=str(path), hint="pass --head (and --num-labels for sequence-classification)"))
            trained_head, completion_only, recorded, length, model, seed = head, False, {}, None, None, 0
            if head not in objectives:
                raise UsageError(Diagnostic(f"--head {head} has no objective to predict with", obj="--head",
                                            hint="heads: " + ", ".join(objectives)))
            objective = objectives[head]
            labels = None
            if objective == CLASSIFICATION:
                if num_labels is None:
                    raise UsageError(Diagnostic(f"{path} has no training record: how many labels is unknown",
                                                obj=str(path), hint="pass --num-labels"))
                labels = tuple(range(num_labels))
        heads.setdefault(trained_head, path)
        if len(heads) > 1:
            first, other = list(heads.items())[:2]
            raise UsageError(Diagnostic(
                f"{other[1]} was trained with the {other[0]} head, {first[1]} with {first[0]}: one model has one head",
                obj=str(path), hint="predict with them in separate runs"))
        role = _role(objective, completion_only, "prompt" in fields)
        tasks[task] = TaskInfo(task, path, labels, role, fields.get(role, recorded.get(role, role)),
                               max_length if max_length is not None else length, model, seed)
    infos = list(tasks.values())
    sizes = {len(t.labels) for t in infos if t.labels is not None}
    if len(sizes) > 1:
        counts = "; ".join(f"{t.bundle}: {len(t.labels or ())} labels" for t in infos)
        raise UsageError(Diagnostic(
            "these bundles were trained with different numbers of labels: one classification head has one size",
            obj=str(infos[-1].bundle), hint="predict with them in separate runs", notes=(counts,)))
    return Setup(objectives[next(iter(heads))], next(iter(heads)), tasks)


def row_tasks(data: DataFile, setup: Setup, *, task: str | None = None, task_field: str | None = None) -> list[str]:
    """Each row's task, in file order.

    Args:
        data: The data file.
        setup: The loaded tasks.
        task: ``--task``: one task for every row.
        task_field: ``--task-field``: a column naming each row's task.

    Raises:
        UsageError: Both flags; ``--task`` not a loaded task; several tasks and neither flag.
        DataError: No such column; a row whose task is missing or not a loaded task (naming the row).
    """
    known = list(setup.tasks)
    if task is not None and task_field is not None:
        raise UsageError(Diagnostic("--task and --task-field both given", obj="--task",
                                    hint="one task for every row (--task), or one per row (--task-field)"))
    if task_field is None:
        if task is None:
            if len(known) > 1:
                hint = ("the data has a 'task' field: pass --task-field task" if "task" in data.fields
                        else "pass --task-field FIELD (a column naming each row's task), or --task TASK")
                raise UsageError(Diagnostic(f"{len(known)} tasks are loaded ({', '.join(known)}): say which task "
                                            "each row is for", obj="--task-field", hint=hint))
            task = known[0]
        if task not in setup.tasks:
            raise UsageError(Diagnostic(f"--task {task} is not a task of the bundles given", obj="--task",
                                        hint=did_you_mean(task, known), notes=("tasks: " + ", ".join(known),)))
        return [task] * data.rows
    require_fields(data, {"task": task_field})
    out = []
    for row, value in zip(data.dataset[ROW], data.dataset[task_field]):
        if value not in setup.tasks:
            shown = "no task" if value is None or (isinstance(value, str) and not value.strip()) else f"task {value!r}"
            raise DataError(Diagnostic(
                f"row {row} of {data.path}: {shown} (field '{task_field}'), not one of the loaded bundles' tasks",
                obj=str(data.path), hint=did_you_mean(str(value), known) if isinstance(value, str) else None,
                notes=("tasks: " + ", ".join(known),)))
        out.append(value)
    return out


def row_texts(data: DataFile, setup: Setup, tasks: list[str]) -> list[str]:
    """Each row's input text (its task's field), in file order.

    Raises:
        DataError: A missing field (naming the task that reads it); a row whose
            value is missing, not text or blank (training dropped such rows, so
            the model never saw one; a prediction for it would mean nothing).
    """
    dataset = data.dataset
    used = {setup.tasks[t].field: t for t in dict.fromkeys(tasks)}
    for field, task in used.items():
        info = setup.tasks[task]
        if field not in data.fields:
            raise DataError(Diagnostic(
                f"{data.path} has no field '{field}' (the {info.role} field of task '{task}')", obj=str(data.path),
                hint=did_you_mean(field, data.fields) or f"name the {info.role} field with --{info.role}-field",
                notes=("fields: " + ", ".join(data.fields),)))
        if data.path.suffix.lower() == ".csv":
            dataset = check_text(data, dataset, field)  # CSV has no types: numerals read as numbers
    columns = {field: dataset[field] for field in used}
    texts = []
    for i, (row, task) in enumerate(zip(dataset[ROW], tasks)):
        field = setup.tasks[task].field
        value = columns[field][i]
        if not isinstance(value, str) or not value.strip():
            what = "is empty" if value is None or isinstance(value, str) else \
                f"holds {type(value).__name__} {value!r}, not text"
            raise DataError(Diagnostic(f"row {row} of {data.path}: field '{field}' {what}", obj=str(data.path),
                                       hint=f"every row of task '{task}' needs text in '{field}'"))
        texts.append(value)
    return texts
