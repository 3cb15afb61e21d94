"""``adaptc predict`` as a function: batch inference with trained bundles, one result per input row.

:func:`predict` checks cheap things first: the bundles' manifests and
training records (:mod:`~adaptlang.training.predict_setup`), then the data
file, each row's task and input text; then it loads the model the way the
bundles were trained (:func:`~adaptlang.training.pretrained.load_pretrained`:
the head, and for classification the number of labels, from the records),
loads the bundles onto it (:func:`adaptlang.load`, which refuses a bundle
made for another model), tokenizes each row as its task was trained
(:mod:`~adaptlang.training.predict_encode`) and runs the batches in
evaluation mode without gradients. Rows of different tasks share a batch
through a mixed-task call (``adapted(**batch, tasks=[...])``,
``adapted.generate(..., tasks=[...])``) where their tasks can share one.

Each result (a dict; :func:`to_jsonl` writes them) has ``row`` (1-based,
file order), ``task``, ``id`` when the data has the id field, and:

* classification: ``label`` (as in the training data: text, or an integer
  class id), ``probabilities`` (label -> softmax of the logits, computed in
  float64) and ``score`` (the predicted label's probability); the predicted
  label is the argmax of the logits (the first one on a tie);
* causal LM and seq2seq: ``text``, the generated tokens decoded without
  special tokens (greedy unless ``num_beams`` > 1; a causal LM's prompt is
  not repeated).

Probabilities are rounded to :data:`DIGITS` decimal places, so the same
inputs give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from adaptlang.errors import BindError, BundleError, Diagnostic, UsageError
from adaptlang.training.objective import CAUSAL_LM, CLASSIFICATION

__all__ = ["DIGITS", "PredictConfig", "PredictResult", "predict", "to_jsonl"]

#: Decimal places kept of every probability.
DIGITS = 6


@dataclass
class PredictConfig:
    """Everything ``adaptc predict`` takes.

    Attributes:
        model: ``--model``: a preset, a folder, a hub id or ``pkg.module:factory``.
        bundles: The bundle files (one task each).
        data: The data file (``.jsonl``, ``.csv``, ``.parquet``).
        task: One task for every row.
        task_field: A column naming each row's task.
        head, num_labels: For bundles without a training record.
        tokenizer: ``--tokenizer DIR`` (default: the model's folder).
        text_field, prompt_field, source_field: Input columns (default: the training record's).
        id_field: A column copied into each result as ``id`` when the data has it.
        max_length: Truncate rows to this many tokens (default: the training record's).
        batch_size: Rows per forward.
        max_new_tokens: Generation: the most tokens generated per row (default 32).
        num_beams: Generation: beam search width (default 1: greedy).
    """

    model: str
    bundles: list[Path]
    data: Path
    task: str | None = None
    task_field: str | None = None
    head: str | None = None
    num_labels: int | None = None
    tokenizer: Path | None = None
    text_field: str | None = None
    prompt_field: str | None = None
    source_field: str | None = None
    id_field: str = "id"
    max_length: int | None = None
    batch_size: int = 16
    max_new_tokens: int | None = None
    num_beams: int | None = None


@dataclass
class PredictResult:
    """What a run gives.

    Attributes:
        rows: One result per input row, in file order (module docstring).
        objective: What the bundles were trained for.
        notes: Things the user should hear (random preset weights, another model than trained on).
    """

    rows: list[dict[str, Any]]
    objective: str
    notes: list[str] = field(default_factory=list)


def _check_numbers(config: PredictConfig, objective: str) -> tuple[int, int]:
    """``(max_new_tokens, num_beams)`` after checking them and the batch size."""
    for name, value in (("--batch-size", config.batch_size), ("--max-new-tokens", config.max_new_tokens),
                        ("--num-beams", config.num_beams), ("--max-length", config.max_length)):
        if value is not None and value < 1:
            raise UsageError(Diagnostic(f"{name} must be at least 1, not {value}", obj=name))
    if objective == CLASSIFICATION:
        for name, value in (("--max-new-tokens", config.max_new_tokens), ("--num-beams", config.num_beams)):
            if value is not None:
                raise UsageError(Diagnostic(f"{name} applies to generation, not to classification", obj=name))
    return config.max_new_tokens or 32, config.num_beams or 1


def predict(config: PredictConfig, progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Predicts every row of ``config.data`` with the bundles' tasks (module docstring).

    Args:
        config: The run.
        progress: Called with ``(rows done, rows in all)`` after each batch.

    Returns:
        The :class:`PredictResult`.

    Raises:
        BundleError: A missing or corrupt bundle, one made for another model,
            bundles that cannot be combined, a task that leaves a new head random (1).
        DataError: An empty or unreadable data file, a missing field, a row
            with no text or an unknown task, a row too long for the model (1).
        UsageError: Contradicting or missing flags (no ``--head`` for a bundle
            without a record, several tasks without ``--task-field``), an
            unknown model (2).
    """
    import torch

    import adaptlang
    from adaptlang.training.data import ROW, read_data
    from adaptlang.training.objective import Labels
    from adaptlang.training.predict_encode import batches, encode_rows
    from adaptlang.training.predict_setup import read_setup, row_tasks, row_texts
    from adaptlang.training.prepare import _prompt_tokens
    from adaptlang.training.pretrained import load_pretrained, max_positions
    from adaptlang.training.quiet import quiet

    setup = read_setup(list(config.bundles), head=config.head, num_labels=config.num_labels,
                       fields={"text": config.text_field, "prompt": config.prompt_field,
                               "source": config.source_field}, max_length=config.max_length)
    new_tokens, beams = _check_numbers(config, setup.objective)
    first = next(iter(setup.tasks.values()))
    labels = Labels(first.labels) if first.labels is not None else None
    with quiet():  # datasets' and transformers' own bars and logs (a CSV column's cast, loading weights)
        data = read_data(config.data)
        tasks = row_tasks(data, setup, task=config.task, task_field=config.task_field)
        texts = row_texts(data, setup, tasks)
        pretrained = load_pretrained(config.model, setup.head, labels=labels, tokenizer=config.tokenizer,
                                     seed=first.seed)
        notes = [text for text in pretrained.notes if pretrained.kind == "preset"]
        notes += [f"task '{t.task}' was trained on model '{t.model}'; predicting with '{pretrained.name}'"
                  for t in setup.tasks.values() if t.model is not None and t.model != pretrained.name]
        adapted = adaptlang.load(pretrained.model, [t.bundle for t in setup.tasks.values()],
                                 tokenizer=pretrained.tokenizer)
        plan = adapted.plan.to_dict()
        _check_new_parameters(plan, setup, pretrained)
        positions = max_positions(pretrained.model, pretrained.tokenizer)
        limits = {t: None if positions is None else positions - _prompt_tokens(plan, t) for t in setup.tasks}
        features = encode_rows(data, setup, tasks, texts, pretrained.tokenizer, limits,
                               new_tokens if setup.objective == CAUSAL_LM else 0)
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        adapted.model.eval()  # dropout off (LoRA dropout included)
        done, numbers = 0, data.dataset[ROW]
        with torch.no_grad():
            for chunk in batches(tasks, plan, config.batch_size):
                names = [tasks[i] for i in chunk]
                rows = [features[i] for i in chunk]
                if setup.objective == CLASSIFICATION:
                    outputs = _classify(adapted, pretrained.tokenizer, rows, names, setup)
                else:
                    outputs = _generate(adapted, pretrained.tokenizer, rows, names, setup.objective,
                                        new_tokens, beams)
                for i, output in zip(chunk, outputs):
                    results[i] = {"row": numbers[i], "task": tasks[i], **output}
                done += len(chunk)
                if progress is not None:
                    progress(done, len(tasks))
    if config.id_field in data.fields:
        for i, value in enumerate(data.dataset[config.id_field]):
            results[i]["id"] = value  # type: ignore[index]
    return PredictResult([r for r in results if r is not None], setup.objective, notes)


def _check_new_parameters(plan: dict[str, Any], setup: Any, pretrained: Any) -> None:
    """Refuses a task whose bundle carries no values for parameters the model built at random (a new head)."""
    from adaptlang.training.pretrained import check_new_trained

    for task, info in setup.tasks.items():
        try:
            check_new_trained(plan, task, pretrained.new_parameters, pretrained.name)
        except BindError as exc:
            raise BundleError(Diagnostic(
                f"{info.bundle} (task '{task}') holds no values for parameters that {pretrained.name} lacks and "
                "that were built at random: its predictions would come from random weights", obj=str(info.bundle),
                hint="predict with a bundle whose task trains the head (a tune delta), or with the model it "
                     "was trained on", notes=(exc.diagnostics[0].message,))) from None


def _call(adapted: Any, names: list[str], method: Any, inputs: dict[str, Any], **kwargs: Any) -> Any:
    """One batch: a plain call under the task when every row has the same, else a mixed-task call."""
    if len(set(names)) == 1:
        adapted.use(names[0])
        return method(**inputs, **kwargs)
    return method(**inputs, tasks=names, **kwargs)


def _classify(adapted: Any, tokenizer: Any, rows: list[dict[str, list[int]]], names: list[str],
              setup: Any) -> list[dict[str, Any]]:
    """Labels, probabilities and scores of one batch (padded on the right, as in training)."""
    import torch

    inputs = tokenizer.pad(rows, padding="longest", return_tensors="pt", padding_side="right")
    logits = _call(adapted, names, adapted, dict(inputs)).logits
    probabilities = torch.softmax(logits.double(), dim=-1)
    out = []
    for logit, prob, task in zip(logits, probabilities, names):
        names_of = setup.tasks[task].labels
        best = int(torch.argmax(logit))
        out.append({"label": names_of[best], "score": round(float(prob[best]), DIGITS),
                    "probabilities": {str(name): round(float(p), DIGITS) for name, p in zip(names_of, prob)}})
    return out


def _generate(adapted: Any, tokenizer: Any, rows: list[dict[str, list[int]]], names: list[str], objective: str,
              new_tokens: int, beams: int) -> list[dict[str, Any]]:
    """Generated text of one batch: a causal LM's prompts padded on the left, so that every row continues at the end."""
    side = "left" if objective == CAUSAL_LM else "right"
    inputs = dict(tokenizer.pad(rows, padding="longest", return_tensors="pt", padding_side=side))
    inputs.pop("token_type_ids", None)  # generate() of decoders takes none
    output = _call(adapted, names, adapted.generate, inputs, max_new_tokens=new_tokens, num_beams=beams,
                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if objective == CAUSAL_LM:
        output = output[:, inputs["input_ids"].shape[1]:]
    return [{"text": tokenizer.decode(ids.tolist(), skip_special_tokens=True)} for ids in output]


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    """The results as JSON Lines: one object per row, keys sorted, non-ASCII text as is (UTF-8)."""
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
