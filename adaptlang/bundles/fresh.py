"""Fresh bundles at compile time (``adaptc compile SPEC --model M --out DIR``).

Freshly initialised deltas depend on the base weights (DoRA magnitudes,
sparse positions chosen by magnitude, prompts initialised from text or the
vocabulary), so bundles are written only for a model that has weights: a
Hugging Face folder with safetensors weights (read with
``from_pretrained(use_safetensors=True)``; a pickled ``*.bin`` is never
opened), a hub id (its safetensors weights and tokenizer are fetched into
the hub cache, see :mod:`adaptlang.plan.hub`) or a ``pkg.module:factory``.
A preset is an architecture without weights: the plan is written and the
reason for no bundles is returned.

With ``--head`` a folder's weights load into the model with that head; a
head the checkpoint lacks (a classifier on a bare ``BertModel``) starts from
transformers' initialisation under the bundle seed, so the bundles are the
same on every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adaptlang.errors import Diagnostic, UsageError

__all__ = ["load_weighted_model", "write_fresh_bundles"]


def _has_safetensors(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()


def load_weighted_model(ref: str, head: str | None = None, num_labels: int | None = None,
                        seed: int = 0) -> tuple[Any, Any, str]:
    """Loads a model with real weights, and a tokenizer when its folder has one.

    ``head``/``num_labels`` are as in :func:`adaptlang.plan.models.load_model`;
    weights the checkpoint lacks are initialised under ``seed``.

    Returns:
        ``(model or None, tokenizer or None, why there is no model)``.

    Raises:
        UsageError: A folder whose only weights are pickles, or that fails to load.
    """
    from adaptlang.plan.models import PRESETS, load_model

    if ref in PRESETS:
        return None, None, f"'{ref}' is a preset (an architecture without weights)"
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        from adaptlang.plan.hub import NoSafeWeightsError, local_model_dir

        try:  # a hub id: its snapshot folder (never random weights under the hub id's name)
            folder = local_model_dir(ref, weights=True) or folder
        except NoSafeWeightsError as exc:
            return None, None, f"'{ref}': {exc.diagnostics[0].message}"
    if folder.is_dir():
        if not _has_safetensors(folder):
            pickles = sorted(p.name for p in folder.glob("*.bin"))
            why = (f"its weights are pickles ({', '.join(pickles)}), which adaptlang never loads" if pickles
                   else "it holds no safetensors weights")
            return None, None, f"'{ref}': {why}"
        import torch

        meta, _ = load_model(str(folder), device="meta", head=head, num_labels=num_labels)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # a new head's initial values, the same on every run
                model = type(meta).from_pretrained(str(folder), config=meta.config, local_files_only=True,
                                                   use_safetensors=True).eval()
        except Exception as exc:  # transformers raises many types for bad folders
            raise UsageError(Diagnostic(f"cannot load the weights in {ref}: {exc}", obj=ref)) from None
        return model, _tokenizer(folder), ""
    model, _ = load_model(ref, device="cpu", head=head, num_labels=num_labels)
    return model, None, ""


def _tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, or None (prompts initialised from text then say they need one)."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 - a folder without a usable tokenizer is fine until text init needs one
        return None


def write_fresh_bundles(spec_path: Path, model_ref: str, out_dir: Path, overrides: dict[str, float],
                        seed: int = 0, head: str | None = None,
                        num_labels: int | None = None) -> tuple[Any, list[Path], str]:
    """Applies a spec to the weighted model and saves every task's seeded, fresh bundle.

    ``head``/``num_labels`` build the model with a task head (``--head``).

    Returns:
        ``(plan, bundle paths, note)``: the plan the bundles were made from
        (compiled against the loaded model) and, when there are no bundles,
        why (the note).
    """
    from adaptlang.bundles.adapted import apply_spec_or_plan
    from adaptlang.plan.compiler import compile_plan, load_spec_for_compile

    model, tokenizer, why = load_weighted_model(model_ref, head, num_labels, seed)
    if model is None:
        return None, [], why
    spec = load_spec_for_compile(spec_path, overrides or None)
    # Named as the plan printed for the same --model, not by the loaded class.
    plan = compile_plan(spec, model, name=Path(model_ref).name if os.path.isdir(model_ref) else model_ref)
    adapted = apply_spec_or_plan(model, plan, spec, overrides, tokenizer=tokenizer, seed=seed)
    return adapted.plan, adapted.save(out_dir), ""
