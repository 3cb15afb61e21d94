"""The optional ``training`` record of a bundle manifest: how the task's values were trained.

``adaptc train`` (the training layer) fills it; this layer owns its format,
checks it when a bundle is written and again when one is read, and shows it
(``adaptc show``). A bundle without it (written by ``save()`` after the
user's own training loop, or by an older adaptlang) is as valid as before.

Fields (JSON; file names without folders, so the record is the same on
every machine)::

    objective        "classification" | "causal-lm" | "seq2seq"
    completion_only  causal LM on prompt/completion: loss on the completion only
    fields           role ("text", "label", ...) -> column name read
    model            {name, kind, head, new_parameters}
    labels           classification: id -> label as in the data; else null
    train, eval      {file, sha256, rows, used, dropped, truncated, split}; eval may be null
    max_length       --max-length, or null
    seed             the run's seed
    hyperparameters  every TrainingArguments field set by default, file or flag
    metrics          {"before": {...}, "after": {...}} evaluation metrics (null without evaluation data)
    train_loss       mean training loss of the run
    steps, epochs    optimizer steps and epochs done
    world_size       processes that trained (torchrun)
    resumed_from     the checkpoint step the run resumed from, or null
    versions         torch, transformers, datasets, adaptlang (and accelerate)

Readers accept fields they do not know (a newer adaptlang may add some);
writers write only these.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adaptlang.errors import BundleError, Diagnostic

__all__ = ["TrainingRecord", "check_training_record"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataRecord(_Strict):
    """One data file as used."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int = Field(ge=0)
    used: int = Field(ge=0)
    dropped: int = Field(ge=0)
    truncated: int = Field(ge=0)
    split: Optional[float] = None


class ModelRecord(_Strict):
    """The base model trained on."""

    name: str
    kind: Literal["preset", "directory", "hub", "factory"]
    head: Optional[str]
    new_parameters: list[str]


def _finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _finite(item, f"{where}[{i}]")


class TrainingRecord(_Strict):
    """The ``training`` section of a manifest (see the module docstring)."""

    objective: Literal["classification", "causal-lm", "seq2seq"]
    completion_only: bool
    fields: dict[str, str]
    model: ModelRecord
    labels: Optional[list[Union[str, int]]]
    train: DataRecord
    eval: Optional[DataRecord]
    max_length: Optional[int] = Field(ge=1)
    seed: int = Field(ge=0)
    hyperparameters: dict[str, Any]
    metrics: dict[str, Optional[dict[str, float]]]
    train_loss: Optional[float]
    steps: int = Field(ge=0)
    epochs: float = Field(ge=0)
    world_size: int = Field(ge=1)
    resumed_from: Optional[int]
    versions: dict[str, str]

    @field_validator("hyperparameters", "metrics")
    @classmethod
    def _json_numbers(cls, value: Any) -> Any:
        _finite(value, "value")  # the manifest is strict JSON: no NaN or infinity
        return value


class _Reading(TrainingRecord):
    """The same fields, read leniently: unknown fields from a newer adaptlang are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=False)


def check_training_record(record: Any, where: str, *, writing: bool) -> dict[str, Any]:
    """Checks a training record; returns it as plain JSON data.

    Args:
        record: The record (a dict, or a :class:`TrainingRecord`).
        where: The bundle it belongs to (for errors).
        writing: True: exactly the known fields (a bug otherwise); False
            (reading a bundle): unknown extra fields are allowed.

    Raises:
        BundleError: A malformed record, naming the first field at fault.
    """
    model = TrainingRecord if writing else _Reading
    try:
        checked = record if isinstance(record, TrainingRecord) else model.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise BundleError(Diagnostic(f"the manifest's training record is malformed: {field}: {first['msg']}",
                                     obj=where)) from None
    return checked.model_dump(mode="json")
