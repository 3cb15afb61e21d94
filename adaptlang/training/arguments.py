"""The ``Trainer``'s arguments: adaptlang's defaults, a ``--trainer-args`` file, then the flags.

Precedence, lowest first: the defaults below, the ``--trainer-args`` file
(YAML or JSON, any ``TrainingArguments`` field), then the hyperparameter
flags the user actually gave (``--epochs --lr --batch-size --grad-accum
--seed --warmup``). A flag on the command line is the most specific thing
the user said, so it wins; a file shared between runs sets the rest.

A few fields belong to adaptlang and are refused in the file: where
checkpoints go (``--out``), how columns reach the model, the progress
display (adaptc draws its own), the sharding engines (FSDP, DeepSpeed),
whose checkpoints ``adaptc train`` does not store as adapter-only files, and
uploads to the hub (``push_to_hub``, ``hub_*``). The file's hyperparameters get
the flags' range checks, and ``report_to`` may name installed integrations only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from adaptlang.errors import Diagnostic, UsageError, did_you_mean

__all__ = ["DEFAULTS", "FLAGS", "read_trainer_args", "training_arguments"]

#: adaptlang's defaults. The learning rate suits parameter-efficient deltas (LoRA factors, a new head),
#: which train well at ten times full fine-tuning's usual 5e-5; each epoch is logged, evaluated and saved.
DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3.0,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "gradient_accumulation_steps": 1,
    "seed": 0,
    "warmup_steps": 0.0,
    "logging_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
}

#: ``adaptc train`` flag -> the ``TrainingArguments`` field it sets.
FLAGS = {"epochs": "num_train_epochs", "lr": "learning_rate", "batch_size": "per_device_train_batch_size",
         "grad_accum": "gradient_accumulation_steps", "seed": "seed", "warmup": "warmup_steps"}

#: Fields the file may not set, and why.
OWNED = {
    "output_dir": "checkpoints go to --out DIR/checkpoints",
    "remove_unused_columns": "adaptc train hands the model exactly its input columns",
    "disable_tqdm": "adaptc draws its own progress bar",
    "fsdp": "adaptc train stores adapter-only checkpoints, which FSDP's checkpointing does not write",
    "fsdp_config": "adaptc train stores adapter-only checkpoints, which FSDP's checkpointing does not write",
    "deepspeed": "adaptc train stores adapter-only checkpoints, which DeepSpeed's checkpointing does not write",
    "resume_from_checkpoint": "pass --resume",
    "overwrite_output_dir": "pass --overwrite",
    **{key: "adaptc train writes its bundle to --out and uploads nothing (the Trainer would push whole "
            "checkpoints); upload the bundle yourself"
       for key in ("push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push",
                   "hub_revision")},
}

#: Range rules of the hyperparameter flags: flag -> (test, what it wants). The file's fields get them too.
RULES = {"epochs": (lambda v: v > 0, "more than 0"), "lr": (lambda v: v > 0, "more than 0"),
         "batch_size": (lambda v: v >= 1, "at least 1"), "grad_accum": (lambda v: v >= 1, "at least 1"),
         "seed": (lambda v: v >= 0, "0 or more"), "warmup": (lambda v: v >= 0, "0 or more")}


def read_trainer_args(path: str | Path) -> dict[str, Any]:
    """Reads a ``--trainer-args`` file: one mapping of ``TrainingArguments`` fields (YAML or JSON).

    Raises:
        UsageError: No such file; not YAML/JSON; not a mapping; an unknown
            field or one adaptlang sets itself (naming the field and the file).
    """
    import yaml
    from transformers import TrainingArguments

    path = Path(path)
    if not path.is_file():
        raise UsageError(Diagnostic(f"no such trainer-args file: {path}", obj=str(path)))
    text = path.read_text(encoding="utf-8")
    try:
        # yaml.safe_load builds plain data only (no tags that construct objects); JSON is YAML too, but
        # json.loads words a JSON mistake better.
        loaded = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(Diagnostic(f"cannot read {path}: {str(exc).splitlines()[0]}", obj=str(path),
                                    hint="a YAML or JSON mapping of TrainingArguments fields")) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(Diagnostic(f"{path} holds a {type(loaded).__name__}, not a mapping", obj=str(path),
                                    hint="write `field: value` lines, e.g. `weight_decay: 0.01`"))
    known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in loaded:
        if key in OWNED:
            raise UsageError(Diagnostic(f"{path}: '{key}' is set by adaptc train", obj=str(path),
                                        hint=OWNED[key]))
        if key not in known:
            raise UsageError(Diagnostic(f"{path}: unknown TrainingArguments field '{key}'", obj=str(path),
                                        hint=did_you_mean(str(key), known) or
                                        "see transformers.TrainingArguments for the fields"))
    return dict(loaded)


def _check_ranges(flags: dict[str, Any], merged: dict[str, Any], file: str | Path | None) -> None:
    """Range checks (:data:`RULES`) for the hyperparameters, as flags or as the file's fields.

    A value out of range from the file would otherwise reach torch (a negative learning rate is a
    ``ValueError`` deep in the optimizer).
    """
    for name, (ok, want) in RULES.items():
        given = flags.get(name) is not None
        value = flags[name] if given else merged.get(FLAGS[name])
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # TrainingArguments checks the types of the file's values
        if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
            flag = f"--{name.replace('_', '-')}"
            raise UsageError(Diagnostic(f"{flag if given else FLAGS[name]} must be {want}, not {value}",
                                        obj=flag if given else str(file or "--trainer-args")))


def _report_to(value: Any, file: str | Path | None) -> Any:
    """``report_to`` as given, after checking each integration named is installed (the Trainer fails late)."""
    from transformers.integrations import get_available_reporting_integrations

    names = [value] if isinstance(value, str) else list(value or [])
    available = get_available_reporting_integrations()
    for name in names:
        if name not in ("none", "all") and name not in available:
            raise UsageError(Diagnostic(
                f"report_to '{name}': not installed", obj=str(file or "--trainer-args"),
                hint="installed integrations: " + (", ".join(available) or "none") + "; or leave report_to out"))
    return value


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def training_arguments(output_dir: Path, flags: dict[str, Any], file_args: dict[str, Any], *, has_eval: bool,
                       loss_only: bool, file: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Builds the ``TrainingArguments``: defaults, then ``file_args``, then the flags given.

    Args:
        output_dir: Where checkpoints go.
        flags: Flag name (:data:`FLAGS`) -> value, None where not given.
        file_args: From :func:`read_trainer_args`.
        has_eval: There is evaluation data: evaluate each epoch by default.
        loss_only: Evaluate the loss only (language models: their logits are
            vocabulary-sized and no metric needs them).
        file: The file ``file_args`` came from (for errors).

    Returns:
        ``(TrainingArguments, the hyperparameters to record)``: every field
        given by default, file or flag, as used.

    Raises:
        UsageError: A flag (or the file's field) out of range, evaluation
            asked for without evaluation data, a ``report_to`` integration
            not installed, or values ``TrainingArguments`` refuses.
    """
    from transformers import TrainingArguments

    merged: dict[str, Any] = dict(DEFAULTS)
    merged["eval_strategy"] = "epoch" if has_eval else "no"
    merged.update(file_args)
    _check_ranges(flags, merged, file)
    merged.update({FLAGS[name]: value for name, value in flags.items() if value is not None})
    merged.setdefault("data_seed", merged["seed"])
    gpu = _has_gpu()
    # Pinned host memory only speeds up copies to a GPU; without one torch warns on every data loader.
    merged.setdefault("dataloader_pin_memory", gpu)
    if not gpu:
        # Without a GPU, accelerate runs torchrun's processes as one distributed CPU job only when told
        # (use_cpu), with gloo, torch's CPU backend; a backend named in one process fails (no process group).
        merged.setdefault("use_cpu", True)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            merged.setdefault("ddp_backend", "gloo")
    if not has_eval and str(merged.get("eval_strategy", "no")) != "no":
        raise UsageError(Diagnostic(f"eval_strategy '{merged['eval_strategy']}' without evaluation data",
                                    obj=str(file or "--trainer-args"), hint="pass --eval FILE or --eval-split 0.1"))
    if has_eval and merged.get("load_best_model_at_end") and not merged.get("metric_for_best_model"):
        merged["metric_for_best_model"] = "loss"
    fixed = {"output_dir": str(output_dir), "remove_unused_columns": False, "disable_tqdm": True,
             "report_to": _report_to(merged.pop("report_to", "none"), file), "prediction_loss_only": loss_only or
             merged.pop("prediction_loss_only", False)}
    try:
        args = TrainingArguments(**merged, **fixed)
    except (TypeError, ValueError) as exc:
        raise UsageError(Diagnostic(f"invalid training arguments: {exc}",
                                    obj=str(file) if file else "adaptc train",
                                    hint="check the --trainer-args file and the flags")) from None
    record = {key: getattr(args, key) for key in sorted(merged)}
    return args, {k: (v.value if hasattr(v, "value") else v) for k, v in record.items()}
