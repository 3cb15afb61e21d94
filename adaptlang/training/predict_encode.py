"""Tokenizing prediction rows the way their task was trained, and grouping them into batches.

Each row is tokenized with its task's tokenizer settings as in training
(:mod:`adaptlang.training.encode`): classification and seq2seq inputs with
the tokenizer's own truncation to ``max_length`` (it keeps closing special
tokens), causal LM prompts cut at the end. A causal LM trained on plain text
learned that its end-of-sequence token ends a text, so a tokenizer that
appends one has it taken off again: the row is a beginning to continue.
Without ``max_length``, a row longer than the model takes is an error naming
the row (truncating it silently would predict from other text than given),
and so is a prompt whose generated tokens would run past the model's positions.

Batches (:func:`batches`): rows whose tasks re-train the same parameters
(``tune`` deltas, such as each classification task's own classifier) can
share one forward through a mixed-task call; rows whose tasks re-train
different ones cannot (the model holds one value per parameter, see
:mod:`adaptlang.runtime.mixed`), so rows are grouped by their tasks' tune
deltas first, keeping file order within a group, then cut into batches.
"""

from __future__ import annotations

from typing import Any

from adaptlang.errors import DataError, Diagnostic
from adaptlang.training.data import ROW, DataFile
from adaptlang.training.objective import CAUSAL_LM
from adaptlang.training.predict_setup import Setup

__all__ = ["batches", "encode_rows", "tune_deltas"]


def encode_rows(data: DataFile, setup: Setup, tasks: list[str], texts: list[str], tokenizer: Any,
                limits: dict[str, int | None], new_tokens: int = 0) -> list[dict[str, list[int]]]:
    """Tokenizes each row for its task, checking lengths.

    Args:
        data: The data file (named in errors).
        setup: The tasks.
        tasks, texts: Each row's task and input text, in file order.
        tokenizer: The model's tokenizer.
        limits: Task -> the most input tokens the model takes under it (its
            positions less the task's soft-prompt tokens), or None.
        new_tokens: Tokens generation adds after a causal LM prompt (0: none).

    Returns:
        One feature dict per row (``input_ids``, ``attention_mask``, and what
        else the tokenizer gives, such as ``token_type_ids``), unpadded.

    Raises:
        DataError: A row longer than its task's limit without ``max_length``;
            a causal LM prompt plus ``new_tokens`` past the limit (naming the row).
    """
    rows = data.dataset[ROW]
    features: list[dict[str, list[int]]] = [{} for _ in tasks]
    for task in dict.fromkeys(tasks):
        info, limit = setup.tasks[task], limits.get(task)
        index = [i for i, t in enumerate(tasks) if t == task]
        batch = [texts[i] for i in index]
        if setup.objective == CAUSAL_LM:
            encoded = {"input_ids": [_prompt_ids(ids, tokenizer, info.role)
                                     for ids in tokenizer(batch, truncation=False)["input_ids"]]}
        else:
            encoded = {k: [list(v) for v in values] for k, values in tokenizer(batch, truncation=False).items()}
        lengths = [len(ids) for ids in encoded["input_ids"]]
        if info.max_length is not None and any(n > info.max_length for n in lengths):
            if setup.objective == CAUSAL_LM:  # as training cuts: the end goes
                encoded = {"input_ids": [ids[:info.max_length] for ids in encoded["input_ids"]]}
            else:
                encoded = {k: [list(v) for v in values] for k, values in
                           tokenizer(batch, truncation=True, max_length=info.max_length).items()}
        for j, i in enumerate(index):
            row = {key: values[j] for key, values in encoded.items()}
            if "attention_mask" not in row:
                row["attention_mask"] = [1] * len(row["input_ids"])
            _check_length(data, rows[i], lengths[j], len(row["input_ids"]), limit, info.max_length,
                          new_tokens if setup.objective == CAUSAL_LM else 0)
            features[i] = row
    return features


def _prompt_ids(ids: Any, tokenizer: Any, role: str) -> list[int]:
    """A causal LM row's ids; a text-trained task's row without the end-of-sequence its tokenizer appended."""
    ids = list(ids)
    eos = tokenizer.eos_token_id
    if role == "text" and eos is not None and len(ids) > 1 and ids[-1] == eos:
        ids = ids[:-1]
    return ids


def _check_length(data: DataFile, row: int, length: int, kept: int, limit: int | None, max_length: int | None,
                  new_tokens: int) -> None:
    if limit is None:
        return
    if max_length is None and length > limit:
        raise DataError(Diagnostic(
            f"row {row} of {data.path} is {length} tokens long; the model takes at most {limit}", obj=str(data.path),
            hint=f"pass --max-length {limit - new_tokens if new_tokens else limit} (or less) to truncate long rows"))
    if new_tokens and kept + new_tokens > limit:
        raise DataError(Diagnostic(
            f"row {row} of {data.path}: its {kept} prompt tokens and --max-new-tokens {new_tokens} make "
            f"{kept + new_tokens}, more than the model's {limit} positions", obj=str(data.path),
            hint="lower --max-new-tokens, or pass a smaller --max-length"))


def tune_deltas(plan: dict[str, Any], task: str) -> frozenset[str]:
    """The ``tune`` deltas of a task: tasks with the same ones can share a batch."""
    return frozenset(term["name"] for term in plan["tasks"][task]["deltas"]
                     if plan["deltas"][term["name"]]["kind"] == "tune")


def batches(tasks: list[str], plan: dict[str, Any], size: int) -> list[list[int]]:
    """Row indices in batches of at most ``size``: rows grouped by their tasks' tune deltas, file order within.

    Args:
        tasks: Each row's task.
        plan: The loaded model's plan (``adapted.plan.to_dict()``).
        size: ``--batch-size``.
    """
    groups: dict[frozenset[str], list[int]] = {}
    keys = {task: tune_deltas(plan, task) for task in dict.fromkeys(tasks)}
    for i, task in enumerate(tasks):
        groups.setdefault(keys[task], []).append(i)
    return [rows[start:start + size] for rows in groups.values() for start in range(0, len(rows), size)]
