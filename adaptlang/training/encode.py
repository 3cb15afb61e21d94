"""Tokenizing rows for an objective, checking their lengths, and batching them.

Every objective leaves ``input_ids`` and ``attention_mask`` (plus what the
tokenizer adds, such as BERT's ``token_type_ids``) and ``labels``:

* classification: the label's id;
* causal LM on text: the tokens themselves (the model shifts them), with the
  tokenizer's end-of-sequence token appended when it has one (so the model
  learns to stop);
* causal LM on prompt/completion: ``-100`` (ignored by the loss) on every
  prompt token, the completion's tokens (and end-of-sequence) after;
* seq2seq: the target's tokens.

Rows are not padded here. Batches are padded to their own longest row
(:func:`collator`): ``DataCollatorWithPadding`` for classification,
``DataCollatorForSeq2Seq`` for the others, which pads ``labels`` with
``-100`` so padding never counts in the loss. Short examples therefore cost
short sequences, not ``--max-length``.

Lengths: without ``--max-length`` a row longer than the model's positions is
an error naming the row (truncating it silently would train on other text
than the user gave); with ``--max-length`` rows are truncated to it and
counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adaptlang.errors import DataError, Diagnostic, UsageError
from adaptlang.training.data import ROW, DataFile, columns
from adaptlang.training.objective import CLASSIFICATION, SEQ2SEQ, Labels, Objective

__all__ = ["Encoded", "IGNORE", "collator", "encode"]

#: The label value the loss ignores (``torch.nn.CrossEntropyLoss``'s ``ignore_index``).
IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """Rows ready for the ``Trainer``.

    Attributes:
        dataset: Model inputs and ``labels`` only (the row numbers are gone).
        truncated: How many rows ``max_length`` cut short.
        longest: The longest row, in tokens, before truncation.
    """

    dataset: Any
    truncated: int
    longest: int


def encode(data: DataFile, rows: Any, objective: Objective, tokenizer: Any, *, labels: Labels | None = None,
           max_length: int | None = None, limit: int | None = None, limit_note: str = "") -> Encoded:
    """Tokenizes ``rows`` (read from ``data``) for ``objective``.

    Args:
        data: The file the rows come from (named in errors).
        rows: The rows (a ``datasets.Dataset``), with their :data:`~adaptlang.training.data.ROW` numbers.
        objective: What to train.
        tokenizer: A ``transformers`` tokenizer.
        labels: The label ids (classification).
        max_length: ``--max-length``: truncate rows to this many tokens.
        limit: The most tokens the model takes (its positions), or None.
        limit_note: Why ``limit`` is what it is (for the error).

    Raises:
        UsageError: ``max_length`` above ``limit``.
        DataError: Without ``max_length``, a row longer than ``limit``
            (naming the row and both lengths); a prompt that leaves no
            completion token within ``max_length``.
    """
    if max_length is not None and limit is not None and max_length > limit:
        raise UsageError(Diagnostic(f"--max-length {max_length} is more than the model takes ({limit} tokens)",
                                    obj="--max-length", notes=(limit_note,) if limit_note else ()))
    rows = columns(rows, [ROW, *objective.fields.values()])
    build = _classification if objective.name == CLASSIFICATION else _seq2seq if objective.name == SEQ2SEQ \
        else _causal
    encoded = build(rows, objective, tokenizer, labels, None)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if objective.name == SEQ2SEQ:  # a target counts too: the decoder takes it
        lengths = [max(n, len(target)) for n, target in zip(lengths, encoded["labels"])]
    if max_length is None and limit is not None:
        for row, length in zip(rows[ROW], lengths):
            if length > limit:
                raise DataError(Diagnostic(
                    f"row {row} of {data.path} is {length} tokens long; the model takes at most {limit}",
                    obj=str(data.path), hint=f"pass --max-length {limit} (or less) to truncate long rows",
                    notes=(limit_note,) if limit_note else ()))
    truncated = sum(1 for n in lengths if max_length is not None and n > max_length)
    if truncated:
        encoded = build(rows, objective, tokenizer, labels, max_length)
        if objective.completion_only:
            _check_completions(encoded, max_length, data, rows[ROW])
    import datasets

    return Encoded(datasets.Dataset.from_dict(encoded), truncated, max(lengths, default=0))


def _cut(max_length: int | None) -> dict[str, Any]:
    """The tokenizer's truncation arguments: its own truncation keeps closing special tokens ([SEP], </s>)."""
    return {"truncation": True, "max_length": max_length} if max_length is not None else {"truncation": False}


def _classification(rows: Any, objective: Objective, tokenizer: Any, labels: Labels | None,
                    max_length: int | None) -> dict[str, list]:
    assert labels is not None
    out = {k: list(v) for k, v in tokenizer(rows[objective.fields["text"]], **_cut(max_length)).items()}
    ids = labels.ids()
    out["labels"] = [ids[v] for v in rows[objective.fields["label"]]]
    return out


def _seq2seq(rows: Any, objective: Objective, tokenizer: Any, labels: Labels | None,
             max_length: int | None) -> dict[str, list]:
    out = {k: list(v) for k, v in tokenizer(rows[objective.fields["source"]], **_cut(max_length)).items()}
    targets = tokenizer(text_target=rows[objective.fields["target"]], **_cut(max_length))
    out["labels"] = [list(ids) for ids in targets["input_ids"]]
    return out


def _causal(rows: Any, objective: Objective, tokenizer: Any, labels: Labels | None,
            max_length: int | None) -> dict[str, list]:
    """Causal LM rows; truncation cuts the end (the prompt stays whole when it fits)."""
    eos = tokenizer.eos_token_id
    if objective.completion_only:
        prompts = tokenizer(rows[objective.fields["prompt"]], truncation=False)["input_ids"]
        completions = tokenizer(rows[objective.fields["completion"]], truncation=False,
                                add_special_tokens=False)["input_ids"]
        input_ids, targets = [], []
        for prompt, completion in zip(prompts, completions):
            completion = list(completion) + ([eos] if eos is not None else [])
            input_ids.append(list(prompt) + completion)
            targets.append([IGNORE] * len(prompt) + completion)
    else:
        input_ids = []
        for ids in tokenizer(rows[objective.fields["text"]], truncation=False)["input_ids"]:
            ids = list(ids)
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
            input_ids.append(ids)
        targets = [list(ids) for ids in input_ids]
    if max_length is not None:
        input_ids = [ids[:max_length] for ids in input_ids]
        targets = [ids[:max_length] for ids in targets]
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": targets}


def _check_completions(encoded: dict[str, list], max_length: int | None, data: DataFile,
                       row_numbers: list[int]) -> None:
    """Refuses a row whose prompt fills ``max_length``: it would train on nothing."""
    for row, targets in zip(row_numbers, encoded["labels"]):
        if all(token == IGNORE for token in targets):
            raise DataError(Diagnostic(
                f"row {row} of {data.path}: the prompt fills all {max_length} tokens of --max-length, "
                "leaving no completion token to train on", obj=str(data.path),
                hint="raise --max-length or shorten the prompt"))


def collator(objective: Objective, tokenizer: Any) -> Any:
    """Returns the batch collator for ``objective``: pads each batch to its longest row.

    Raises:
        UsageError: A tokenizer with neither a padding nor an end-of-sequence token.
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if tokenizer.pad_token_id is None:
        raise UsageError(Diagnostic("the tokenizer has no padding token", obj=type(tokenizer).__name__,
                                    hint="give a tokenizer with a pad (or end-of-sequence) token"))
    if objective.name == CLASSIFICATION:
        return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE, return_tensors="pt")
