"""The model and tokenizer a run trains: real weights, with the head the objective needs.

``--model`` takes, in this order of lookup:

* a **preset** (``tiny-llama``, ...): random weights, so only the ``tiny-*``
  presets are accepted (for tests and smoke runs; a warning says so); a
  full-size preset is refused, since training it would start from noise;
* a local **Hugging Face folder**: ``from_pretrained`` with the head class the
  objective needs (:func:`adaptlang.plan.models.head_class`), safetensors
  weights only, ``local_files_only``, never ``trust_remote_code``;
* a **hub id** (``org/name``), through
  :func:`adaptlang.plan.hub.local_model_dir`, then as a folder;
* ``package.module:factory``: the factory's model, as it builds it.

The tokenizer comes from ``--tokenizer DIR`` or else the model's folder
(presets and factories have none of their own).

``from_pretrained`` reports the parameters the checkpoint lacked and that it
initialised at random (a classification head on a bare encoder):
:func:`check_new_trained` refuses a task that would leave one of them frozen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from adaptlang.errors import BindError, Diagnostic, UsageError
from adaptlang.training.objective import Labels

__all__ = ["Pretrained", "check_new_trained", "load_pretrained", "max_positions"]


@dataclass
class Pretrained:
    """A model with weights and its tokenizer.

    Attributes:
        model: The model, in training dtype (float32) on the CPU.
        tokenizer: Its tokenizer.
        name: The model's portable name: a preset or hub id, a factory
            reference, or a folder's base name (no machine's paths).
        kind: ``"preset"``, ``"directory"``, ``"hub"`` or ``"factory"``.
        new_parameters: Parameter names ``from_pretrained`` initialised at
            random (missing from the checkpoint, or of another shape there).
        notes: Things the user should hear (random weights, a new head).
        labels: The classification labels in the order the model's head
            uses: the data's sorted order, or the checkpoint's own when its
            head was trained on the same label names in another order.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    kind: str
    new_parameters: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    labels: Labels | None = None


def load_pretrained(ref: str, head: str, *, labels: Labels | None = None, tokenizer: str | Path | None = None,
                    seed: int = 0) -> Pretrained:
    """Loads ``ref`` with ``head`` (and a classification head's labels) and its tokenizer.

    Args:
        ref: ``--model``.
        head: A key of :data:`adaptlang.plan.models.HEADS` (not for a factory).
        labels: The classification labels (``num_labels``, ``id2label``).
        tokenizer: ``--tokenizer``: a folder holding a tokenizer.
        seed: Seeds the random values of new parameters (a new head).

    Raises:
        UsageError: An unknown model, a full-size preset, a folder without
            safetensors weights, custom code or a tokenizer, a head the model
            type lacks, a tokenizer larger than the model's vocabulary.
    """
    import transformers

    from adaptlang.plan.hub import local_model_dir
    from adaptlang.plan.models import _FACTORY_REF, PRESETS
    from adaptlang.training.quiet import quiet

    transformers.set_seed(seed)  # a new head's random values: the same for the same seed
    ref = str(ref).strip()
    with quiet():
        if ref in PRESETS:
            loaded = _preset(ref, head, labels)
        elif os.path.exists(os.path.expanduser(ref)):
            # The folder's own name as given (a symlink's, not its target's), without the machine's path.
            name = os.path.basename(os.path.abspath(os.path.expanduser(ref)))
            loaded = _directory(Path(ref).expanduser(), head, labels, name, "directory")
        elif _FACTORY_REF.match(ref):
            loaded = _factory(ref, labels)
        else:
            found = local_model_dir(ref, weights=True)
            if found is None:
                from adaptlang.plan.models import load_model

                load_model(ref)  # raises the compiler's own "unknown model" error, with its suggestions
                raise UsageError(Diagnostic(f"unknown model '{ref}'", obj=ref))  # pragma: no cover
            loaded = _directory(Path(found), head, labels, ref, "hub")
        folder = Path(tokenizer) if tokenizer is not None else loaded.pop("folder", None)
        if folder is None:
            raise UsageError(Diagnostic(f"model '{ref}' has no tokenizer of its own", obj=ref,
                                        hint="pass --tokenizer DIR (a folder holding a tokenizer)"))
        tok = _tokenizer(folder)
    model = loaded["model"]
    _fit_tokenizer(model, tok, ref)
    return Pretrained(model, tok, loaded["name"], loaded["kind"], tuple(sorted(loaded.get("new", ()))),
                      loaded.get("notes", []), loaded.get("labels", labels))


def _preset(ref: str, head: str, labels: Labels | None) -> dict[str, Any]:
    """A tiny preset with seeded random weights; a full-size one is refused."""
    import torch

    from adaptlang.plan.models import load_model

    if not ref.startswith("tiny-"):
        hint = ("give a local Hugging Face model folder or a hub id; only the tiny-* presets train "
                "from random weights (for tests)")
        if os.path.exists(ref):
            hint = f"presets come first: write ./{ref} for the folder '{ref}'"
        raise UsageError(Diagnostic(
            f"preset '{ref}' has no weights: training it would start from random values", obj=ref, hint=hint))
    model, _ = load_model(ref, device="cpu", dtype=torch.float32, head=head,
                          num_labels=len(labels.names) if labels is not None else None)
    _set_labels(model, labels)
    return {"model": model.train(), "name": ref, "kind": "preset",
            "notes": [f"preset '{ref}' has random weights (a test model, not a pretrained one)"]}


def _directory(path: Path, head: str, labels: Labels | None, name: str, kind: str) -> dict[str, Any]:
    """``from_pretrained`` on a local folder, with the head class ``head`` calls for."""
    import torch
    import transformers

    from adaptlang.plan.model_config import read_config
    from adaptlang.plan.models import head_class

    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise UsageError(Diagnostic(f"'{path}' is not a Hugging Face model folder (no config.json)", obj=str(path),
                                    hint="point --model at a folder holding config.json and model.safetensors"))
    raw = read_config(config_file, str(config_file))  # within the plan limits, as for compiling
    if raw.get("auto_map"):
        raise UsageError(Diagnostic(f"{config_file} needs custom code (auto_map), which adaptlang does not run",
                                    obj=str(config_file), hint="wrap the model in a pkg.module:factory instead"))
    if not any(path.glob("*.safetensors")):
        raise UsageError(Diagnostic(
            f"{path} has no safetensors weights", obj=str(path),
            hint="adaptlang loads .safetensors only (pickled .bin weights can run code when loaded); convert them"))
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many kinds for a bad config
        raise UsageError(Diagnostic(f"cannot build a config from {config_file}: {exc}", obj=str(config_file))) from None
    cls = head_class(head, config, str(path))
    extra: dict[str, Any] = {}
    notes = []
    if labels is not None:
        labels = checkpoint_label_order(config, labels, name, notes)
        # problem_type picks the loss: a config's "regression" or "multi_label_classification" would apply MSE
        # or BCE to class ids; adaptc trains one class per row.
        extra = {"num_labels": len(labels.names), "id2label": labels.id2label, "label2id": labels.label2id,
                 "problem_type": "single_label_classification"}
    try:
        model, info = cls.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32,
            output_loading_info=True, ignore_mismatched_sizes=True, **extra)
    except Exception as exc:
        raise UsageError(Diagnostic(f"cannot load the weights in {path}: {type(exc).__name__}: {exc}",
                                    obj=str(path))) from None
    params = dict(model.named_parameters(remove_duplicate=False))
    new = {k for k in info.get("missing_keys", ()) if k in params}
    new |= {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())} & set(params)
    if new:
        notes.append(f"{cls.__name__} on {name}: {len(new)} new parameters, not in the checkpoint "
                     f"(random, trained by this task): {', '.join(sorted(new))}")
    return {"model": model.train(), "name": name, "kind": kind, "new": new, "notes": notes, "folder": path,
            "labels": labels}


def checkpoint_label_order(config: Any, labels: Labels, name: str, notes: list[str]) -> Labels:
    """Returns ``labels`` in the order of a checkpoint's trained head when it names the same labels.

    A checkpoint fine-tuned for classification keeps its label names in
    ``config.id2label`` (``transformers``' default names ``LABEL_0``, ... mean
    no names). Row ``i`` of its classifier scores ``id2label[i]``; mapping the
    data's labels to ids in sorted order instead would make the loaded head
    score each class as another (a silent swap, worst for a task that does
    not re-train the head). Same names in another order: the checkpoint's
    order is taken. Other names on a head of the same size: its rows are
    re-used for the data's labels in sorted order, and a note says so.
    """
    ids = sorted((getattr(config, "id2label", None) or {}).items())
    if not ids or all(str(v) == f"LABEL_{k}" for k, v in ids):
        return labels  # no names: a new or unnamed head
    names = [str(v) for _, v in ids]
    ours = [str(n) for n in labels.names]
    if names == ours:
        return labels
    if sorted(names) == sorted(ours):
        by_text = {str(n): n for n in labels.names}
        notes.append(f"{name}'s classifier was trained with the labels in the order {names}; "
                     "that order is kept, so each row of the head scores the label it was trained for")
        return Labels(tuple(by_text[n] for n in names))
    if len(names) == len(ours):
        notes.append(f"{name}'s classifier was trained for the labels {names}, not the data's {ours}: "
                     "its rows are re-used for the data's labels in sorted order")
    return labels


def _factory(ref: str, labels: Labels | None) -> dict[str, Any]:
    """``package.module:factory``'s model, as built (its own head; adaptlang adds none).

    A classifier's labels follow its own head as for a folder
    (:func:`checkpoint_label_order`), and a head with another number of
    outputs than the data has labels is refused: cross-entropy would train
    it without complaint, with some outputs never used.
    """
    from adaptlang.plan.models import load_model

    model, _ = load_model(ref, device="cpu")
    notes: list[str] = []
    config = getattr(model, "config", None)
    if labels is not None and config is not None:
        outputs = getattr(config, "num_labels", None)
        if outputs is not None and outputs != len(labels.names):
            raise UsageError(Diagnostic(
                f"model factory '{ref}' builds a classifier with {outputs} outputs, but the data has "
                f"{len(labels.names)} labels", obj=ref,
                hint="build the head with num_labels matching the data, or pass --num-labels",
                notes=("labels: " + ", ".join(str(n) for n in labels.names),)))
        labels = checkpoint_label_order(config, labels, ref, notes)
        _set_labels(model, labels)
    return {"model": model.train(), "name": ref, "kind": "factory", "notes": notes, "labels": labels}


def _set_labels(model: nn.Module, labels: Labels | None) -> None:
    config = getattr(model, "config", None)
    if labels is not None and config is not None:
        config.id2label, config.label2id = labels.id2label, labels.label2id


def _tokenizer(folder: Path) -> Any:
    """``AutoTokenizer.from_pretrained(folder)``, local files only, no custom code."""
    import transformers

    if not Path(folder).is_dir():
        raise UsageError(Diagnostic(f"no such tokenizer folder: {folder}", obj=str(folder)))
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                          trust_remote_code=False)
    except Exception as exc:
        raise UsageError(Diagnostic(f"cannot load a tokenizer from {folder}: {type(exc).__name__}: {exc}",
                                    obj=str(folder), hint="pass --tokenizer DIR, a folder holding tokenizer files"))


def _fit_tokenizer(model: nn.Module, tokenizer: Any, ref: str) -> None:
    """Gives the tokenizer a padding token if it has none, and checks its ids fit the model's embeddings.

    A causal LM tokenizer often has no padding token (GPT-2, Llama): padding
    with end-of-sequence is harmless, since padded positions are masked out
    and their labels ignored. A classifier that reads the last real token
    (GPT-2's) needs ``pad_token_id`` in its config to find it.
    """
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise UsageError(Diagnostic(
            f"the tokenizer has {len(tokenizer)} tokens but model '{ref}' embeds only {rows}", obj=ref,
            hint="pass the model's own tokenizer (--tokenizer DIR)"))


def max_positions(model: nn.Module, tokenizer: Any) -> int | None:
    """The most tokens the model takes: its position table's size (and the tokenizer's limit), or None.

    Models with relative positions (T5) have no fixed limit: None.
    """
    config = getattr(model, "config", None)
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
    cap = getattr(tokenizer, "model_max_length", None)
    if isinstance(cap, int) and cap < 1_000_000:  # transformers' "no limit" is a huge sentinel
        limits.append(cap)
    found = [int(n) for n in limits if isinstance(n, int) and n > 0]
    return min(found) if found else None


def check_new_trained(plan: dict[str, Any], task: str, new: tuple[str, ...], model_name: str) -> None:
    """Refuses a task that leaves a randomly initialised parameter frozen.

    A new head (a classifier on a bare encoder) starts random: unless the task
    trains it whole, training adapts everything else to a fixed random
    projection. Only a non-frozen ``tune`` delta re-trains a parameter whole
    (at every name of a tied tensor).

    Raises:
        BindError: Naming the untrained parameters and the delta to add (the spec does not fit this model).
    """
    trained: set[str] = set()
    for term in plan["tasks"][task]["deltas"]:
        delta = plan["deltas"][term["name"]]
        if term["frozen"] or delta["kind"] != "tune":
            continue
        for site in delta["sites"]:
            trained.add(f"{site['path']}.{site['param']}" if site["path"] else site["param"])
            trained.update(site.get("shared_with", ()))
    missing = [name for name in new if name not in trained]
    if missing:
        modules = sorted({name.rpartition(".")[0] or name for name in missing})
        raise BindError(Diagnostic(
            f"task '{task}' does not train the new parameters of {model_name}: {', '.join(missing)}", obj=task,
            hint=f"they start random (the checkpoint lacks them); add a delta that trains them, e.g. "
                 f"`tune head {{ params {', '.join(modules)} }}`, and put it in the task",
            notes=("training with a frozen random head would fit everything else to noise",)))
