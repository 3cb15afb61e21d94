"""Which objective a run trains, from its data, and the classification labels.

Three objectives, each with the model head it needs (a key of
:data:`adaptlang.plan.models.HEADS`) and the fields it reads:

===================  =======================  ===============================
objective            head                     fields (defaults)
===================  =======================  ===============================
``classification``   sequence-classification  ``text``, ``label``
``causal-lm``        causal-lm                ``text``; or ``prompt`` + ``completion``
``seq2seq``          seq2seq-lm               ``source``, ``target``
===================  =======================  ===============================

:func:`choose_objective` takes ``--objective`` or infers it from the fields
present: a label field means classification, prompt and completion a causal
LM with the loss on the completion only, source and target seq2seq, text
alone a causal LM. :func:`label_set` maps labels (strings or integers, never
a mix) to ids in sorted order, so the same data always gives the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaptlang.errors import DataError, Diagnostic, UsageError, did_you_mean
from adaptlang.training.data import ROW, DataFile, columns

__all__ = ["CAUSAL_LM", "CLASSIFICATION", "Fields", "HEAD_OF", "Labels", "OBJECTIVES", "SEQ2SEQ", "Objective",
           "choose_objective", "label_set"]

CLASSIFICATION = "classification"
CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"

#: Objective -> the model head it trains (a key of ``adaptlang.plan.models.HEADS``).
HEAD_OF = {CLASSIFICATION: "sequence-classification", CAUSAL_LM: "causal-lm", SEQ2SEQ: "seq2seq-lm"}
OBJECTIVES = tuple(HEAD_OF)


@dataclass(frozen=True)
class Fields:
    """The column names a run reads (``--text-field`` ... ``--target-field``)."""

    text: str = "text"
    label: str = "label"
    prompt: str = "prompt"
    completion: str = "completion"
    source: str = "source"
    target: str = "target"


@dataclass(frozen=True)
class Objective:
    """What a run trains.

    Attributes:
        name: One of :data:`OBJECTIVES`.
        fields: Role (``text``, ``label``, ``prompt``, ...) -> column name, the columns it reads.
    """

    name: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def head(self) -> str:
        """The model head it needs."""
        return HEAD_OF[self.name]

    @property
    def completion_only(self) -> bool:
        """A causal LM trained on prompt/completion pairs: the loss counts completion tokens only."""
        return self.name == CAUSAL_LM and "completion" in self.fields


def choose_objective(data: DataFile, fields: Fields, wanted: str | None = None) -> Objective:
    """Returns the objective ``wanted`` (``--objective``), or the one the data's fields call for.

    Raises:
        UsageError: An unknown ``wanted``.
        DataError: Data without the fields any objective reads (naming the
            file and its fields); missing fields are checked by the caller.
    """
    have = set(data.fields)
    pair = fields.prompt in have and fields.completion in have
    if wanted is not None:
        if wanted not in OBJECTIVES:
            raise UsageError(Diagnostic(f"unknown objective '{wanted}'", obj="--objective",
                                        hint=did_you_mean(wanted, OBJECTIVES) or "objectives: " + ", ".join(OBJECTIVES)))
        if wanted == CLASSIFICATION:
            return Objective(wanted, {"text": fields.text, "label": fields.label})
        if wanted == SEQ2SEQ:
            return Objective(wanted, {"source": fields.source, "target": fields.target})
        if pair or fields.text not in have and (fields.prompt in have or fields.completion in have):
            return Objective(wanted, {"prompt": fields.prompt, "completion": fields.completion})
        return Objective(wanted, {"text": fields.text})
    if fields.label in have:
        return Objective(CLASSIFICATION, {"text": fields.text, "label": fields.label})
    if pair:
        return Objective(CAUSAL_LM, {"prompt": fields.prompt, "completion": fields.completion})
    if fields.source in have and fields.target in have:
        return Objective(SEQ2SEQ, {"source": fields.source, "target": fields.target})
    if fields.text in have:
        return Objective(CAUSAL_LM, {"text": fields.text})
    raise DataError(Diagnostic(
        f"{data.path} has none of the fields an objective reads", obj=str(data.path),
        hint=f"classification: '{fields.text}' + '{fields.label}'; causal LM: '{fields.text}', or "
             f"'{fields.prompt}' + '{fields.completion}'; seq2seq: '{fields.source}' + '{fields.target}' "
             "(other names: --text-field, --label-field, ...)",
        notes=("fields: " + ", ".join(data.fields),)))


@dataclass(frozen=True)
class Labels:
    """Classification labels and their ids.

    Attributes:
        names: Id -> the label as it appears in the data (a string or an integer).
    """

    names: tuple[Any, ...]

    @property
    def id2label(self) -> dict[int, str]:
        """Id -> label text (what ``transformers`` configs hold)."""
        return {i: str(name) for i, name in enumerate(self.names)}

    @property
    def label2id(self) -> dict[str, int]:
        """Label text -> id."""
        return {str(name): i for i, name in enumerate(self.names)}

    def ids(self) -> dict[Any, int]:
        """The data's label values -> ids."""
        return {name: i for i, name in enumerate(self.names)}


def _kind(value: Any) -> str | None:
    """``"text"`` or ``"integer"`` for a usable label value, None otherwise (floats, booleans, lists)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, int) and not isinstance(value, bool):
        return "integer"
    return None


def label_set(parts: list[tuple[DataFile, Any]], label: str, num_labels: int | None = None) -> Labels:
    """Maps a label field's values to ids, sorted (numbers numerically, text by code point).

    The first part is the training data: its labels make the set; later parts
    (evaluation data) may only use labels it has.

    Args:
        parts: ``(file, rows)`` pairs, training data first.
        label: The label column.
        num_labels: ``--num-labels``: with integer labels, the ids are the
            labels themselves, ``0 .. num_labels - 1`` (a class may then be
            absent from the data); with text labels it must equal their number.

    Raises:
        DataError: A label that is neither text nor an integer, text and
            integer labels mixed (naming the first row that differs), or an
            evaluation label the training data lacks; a label outside
            ``--num-labels``' range; training data with one class only.
        UsageError: ``--num-labels`` that does not fit the labels.
    """
    first: tuple[Any, str, Any] | None = None  # (file, row, value) that fixed the kind
    seen: set[Any] = set()
    train_file = parts[0][0]
    for index, (data, rows) in enumerate(parts):
        table = columns(rows, [ROW, label])
        for row, value in zip(table[ROW], table[label]):
            kind = _kind(value)
            if kind is None:
                raise DataError(Diagnostic(
                    f"row {row} of {data.path}: label {value!r} is a {type(value).__name__}, not text or an integer",
                    obj=str(data.path), hint="labels are class names (text) or class ids (integers)"))
            if first is None:
                first = (data, row, value)
            elif kind != _kind(first[2]):
                raise DataError(Diagnostic(
                    f"row {row} of {data.path}: label {value!r} is {kind}, but row {first[1]} of {first[0].path} "
                    f"has {_kind(first[2])} label {first[2]!r}", obj=str(data.path),
                    hint="use one kind of label throughout: all class names or all integer ids"))
            if index == 0:
                seen.add(value)
            elif value not in seen and not (num_labels and kind == "integer" and 0 <= value < num_labels):
                raise DataError(Diagnostic(
                    f"row {row} of {data.path}: label {value!r} does not occur in the training data "
                    f"{train_file.path}", obj=str(data.path),
                    notes=("training labels: " + ", ".join(map(repr, sorted(seen))),)))
    names = tuple(sorted(seen))
    if num_labels is None:
        if len(names) < 2:
            # A one-output head is what transformers trains as regression (MSE on id 0): the run would
            # "converge" at once and every prediction would be that class with probability 1.
            raise DataError(Diagnostic(
                f"the training data {train_file.path} has {len(names)} class ({', '.join(map(repr, names))}): "
                "classification needs at least 2", obj=str(train_file.path),
                hint="add rows of the other classes (or, with integer class ids, pass --num-labels)"))
        return Labels(names)
    if num_labels < 2:
        raise UsageError(Diagnostic(f"--num-labels must be at least 2, not {num_labels}", obj="--num-labels",
                                    hint="classification tells 2 or more classes apart"))
    if first is not None and _kind(first[2]) == "integer":
        outside = [v for v in names if not 0 <= v < num_labels]
        if outside:
            raise DataError(Diagnostic(
                f"label {outside[0]} in {train_file.path} is outside 0 .. {num_labels - 1} (--num-labels {num_labels})",
                obj=str(train_file.path), hint="integer labels are class ids: 0 up to --num-labels - 1"))
        return Labels(tuple(range(num_labels)))
    if num_labels != len(names):
        raise UsageError(Diagnostic(
            f"--num-labels {num_labels} but the training data has {len(names)} text labels", obj="--num-labels",
            hint="text labels define the classes; leave --num-labels out",
            notes=("labels: " + ", ".join(map(repr, names)),)))
    return Labels(names)
