"""What a run records: the bundle's training record, and the run identity a resume must match.

:func:`training_record` assembles the manifest's ``training`` section (its
format and checks belong to :mod:`adaptlang.bundles.training_record`).
:func:`run_identity` is what makes two runs "the same run" for ``--resume``:
the spec's plan, the data files' contents, the objective and the
hyperparameters. It is written to ``checkpoints/run.json`` when a run
starts, and a resumed run must match it, so that a checkpoint never
continues under other data or settings without the user saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptlang.errors import Diagnostic, UsageError

__all__ = ["RUN_FILE", "check_run_identity", "data_record", "library_versions", "read_before", "run_identity",
           "training_record", "write_before", "write_run_identity"]

#: The run identity file inside the checkpoints folder.
RUN_FILE = "run.json"
#: The evaluation before training, kept for a resumed run's record.
BEFORE_FILE = "before.json"

#: TrainingArguments fields that describe the machine, not the run: a resume on another machine may differ.
MACHINE = frozenset({"use_cpu", "dataloader_pin_memory", "ddp_backend"})


def library_versions() -> dict[str, str]:
    """The versions of the libraries that shaped the result."""
    import accelerate
    import datasets
    import torch
    import transformers

    import adaptlang

    return {"adaptlang": adaptlang.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "accelerate": accelerate.__version__}


def data_record(data: Any, used: int, dropped: int, truncated: int, split: float | None = None) -> dict[str, Any]:
    """One data file's entry: its base name, sha256 and row counts.

    Args:
        data: The :class:`~adaptlang.training.data.DataFile`.
        used: Rows trained (or evaluated) on.
        dropped: Rows dropped for an empty field.
        truncated: Rows cut to ``--max-length``.
        split: For an evaluation set held out of the training file: the fraction.
    """
    return {"file": Path(data.path).name, "sha256": data.sha256, "rows": data.rows, "used": used,
            "dropped": dropped, "truncated": truncated, "split": split}


def training_record(*, objective: Any, model: Any, head: str | None, labels: Any, train: dict[str, Any],
                    eval: dict[str, Any] | None, max_length: int | None, seed: int, hyperparameters: dict[str, Any],
                    before: dict[str, float] | None, after: dict[str, float] | None, train_loss: float | None,
                    steps: int, epochs: float, world_size: int, resumed_from: int | None) -> dict[str, Any]:
    """The manifest's ``training`` record (fields: :mod:`adaptlang.bundles.training_record`)."""
    return {
        "objective": objective.name,
        "completion_only": objective.completion_only,
        "fields": dict(objective.fields),
        "model": {"name": model.name, "kind": model.kind, "head": head, "new_parameters": list(model.new_parameters)},
        "labels": list(labels.names) if labels is not None else None,
        "train": train,
        "eval": eval,
        "max_length": max_length,
        "seed": seed,
        "hyperparameters": _json(hyperparameters),
        "metrics": {"before": before, "after": after},
        "train_loss": train_loss,
        "steps": int(steps),
        "epochs": float(epochs),
        "world_size": int(world_size),
        "resumed_from": resumed_from,
        "versions": library_versions(),
    }


def _json(values: dict[str, Any]) -> dict[str, Any]:
    """Values as JSON has them (enums by value, anything else exotic as text)."""
    out = {}
    for key, value in values.items():
        value = getattr(value, "value", value)
        if not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = str(value)
        out[key] = value
    return out


def run_identity(*, plan_sha256: str, task: str, objective: Any, train_sha256: str, eval_sha256: str | None,
                 eval_split: float | None, labels: Any, max_length: int | None,
                 hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    return json.loads(json.dumps({
        "plan_sha256": plan_sha256, "task": task, "objective": objective.name, "fields": objective.fields,
        "train_sha256": train_sha256, "eval_sha256": eval_sha256, "eval_split": eval_split,
        "labels": list(labels.names) if labels is not None else None, "max_length": max_length,
        "hyperparameters": _json({k: v for k, v in hyperparameters.items() if k not in MACHINE}),
    }, sort_keys=True, default=str))


def _write_json(path: Path, data: Any) -> None:
    """Writes JSON atomically: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    temp.replace(path)


def write_run_identity(folder: Path, identity: dict[str, Any]) -> None:
    """Writes ``folder/run.json``."""
    _write_json(folder / RUN_FILE, identity)


def write_before(folder: Path, metrics: dict[str, float]) -> None:
    """Keeps the evaluation before training (``folder/before.json``) for the record of a resumed run."""
    _write_json(folder / BEFORE_FILE, metrics)


def read_before(folder: Path) -> dict[str, float] | None:
    """The evaluation before training of the run being resumed, or None if it had none (or it is unreadable)."""
    try:
        found = json.loads((folder / BEFORE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and all(isinstance(v, (int, float)) for v in found.values())
    return {str(k): float(v) for k, v in found.items()} if ok else None


def check_run_identity(folder: Path, identity: dict[str, Any]) -> None:
    """Refuses to resume a run whose spec, data or settings differ from the checkpoints'.

    Raises:
        UsageError: Naming what differs (the first few fields).
    """
    path = folder / RUN_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(Diagnostic(f"{path} is missing or unreadable: cannot tell which run the checkpoints are",
                                    obj=str(path), hint="start over with --overwrite")) from None
    differ = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
    if "hyperparameters" in differ:
        old, new = recorded.get("hyperparameters") or {}, identity.get("hyperparameters") or {}
        differ.remove("hyperparameters")
        differ += sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise UsageError(Diagnostic(
            f"--resume: this run differs from the one in {folder} ({', '.join(differ[:6])})", obj=str(folder),
            hint="resume with the same spec, task, data and settings; or start over with --overwrite",
            notes=tuple(f"{k}: was {_get(recorded, k)!r}, now {_get(identity, k)!r}" for k in differ[:4])))


def _get(identity: dict[str, Any], key: str) -> Any:
    return identity[key] if key in identity else (identity.get("hyperparameters") or {}).get(key)
