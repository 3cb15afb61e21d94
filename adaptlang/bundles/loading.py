"""``adaptlang.load``: bundles onto a base model, from the bundles alone.

Every bundle is read and checked in full (:func:`~adaptlang.bundles.bundle.read_bundle`)
and matched against the model's fingerprint before the model is touched. The
bundles' task plans are then merged into one plan, applied in one
transaction, and their tensors copied in. A failure at any step leaves the
model exactly as it was.

Merging several bundles (documented in ``docs/bundles.md``):

* a task name may appear once;
* a delta that two bundles both carry is **shared** when its plan section and
  every tensor are equal (tasks saved together share their deltas), and
  otherwise the later one is **renamed** ``{delta}_{task}`` (each task then
  keeps exactly the values it was saved with); ``load_report`` lists both;
* base transforms (quantization) must be equal in every bundle.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from adaptlang.bundles.adapted import BundleAdapted
from adaptlang.bundles.bundle import Bundle, read_bundle
from adaptlang.bundles.fitting import retarget_plan, structure_differences
from adaptlang.bundles.manifest import describe_structure, split_key
from adaptlang.errors import AdaptError, BundleError, Diagnostic, UsageError

__all__ = ["load", "PlaceholderTokenizer"]


class PlaceholderTokenizer:
    """Stands in for a tokenizer while loading: prompt values come from the bundle, not from text.

    Why: a prompt delta initialised from text needs a tokenizer at apply
    time, but a loaded prompt's initial values are overwritten at once.
    """

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [0]}


def _paths(path_or_paths: Any) -> list[Path]:
    """Returns the bundle paths as a non-empty list."""
    if isinstance(path_or_paths, (str, Path)):
        items = [Path(path_or_paths)]
    elif isinstance(path_or_paths, Iterable):
        items = [Path(p) for p in path_or_paths]
    else:
        raise UsageError(Diagnostic(f"expected a bundle path or a list of them, got {type(path_or_paths).__name__}",
                                    obj="adaptlang.load"))
    if not items:
        raise UsageError(Diagnostic("no bundle to load", obj="adaptlang.load"))
    return items


def _fit(bundle: Bundle, sig: Any, strict: bool, report: dict[str, list[str]]) -> tuple[dict[str, Any], Bundle]:
    """Returns the bundle's plan for this model (re-targeted when allowed), and its tensors to load."""
    plan = bundle.task_plan
    if plan["model"]["fingerprint"] == sig.fingerprint:
        return plan, bundle
    diffs = structure_differences(bundle.structure, sig)
    if strict:
        raise BundleError(Diagnostic(
            "this bundle was made for a different model (structural fingerprints differ)", obj=str(bundle.path),
            hint="load it onto the model it was trained on, or pass strict=False to load the sites that fit",
            notes=tuple(diffs)))
    plan, skipped, kept = retarget_plan(plan, sig)
    report["mismatch"].extend(f"{bundle.path.name}: {line}" for line in diffs)
    report["skipped"].extend(f"{bundle.path.name}: {line}" for line in skipped)
    if not plan["tasks"]:
        return plan, Bundle(bundle.path, bundle.manifest, {})
    tensors = {k: v for k, v in bundle.tensors.items() if "/".join(split_key(k)[:2]) in kept}
    return plan, Bundle(bundle.path, bundle.manifest, tensors)


def _same_delta(a_plan: dict[str, Any], a: Bundle, b_plan: dict[str, Any], b: Bundle, name: str) -> bool:
    """True when two bundles carry the same delta: equal plan section and bit-equal tensors."""
    if a_plan["deltas"][name] != b_plan["deltas"][name]:
        return False
    ta, tb = a.delta_tensors(name), b.delta_tensors(name)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def _rename(plan: dict[str, Any], bundle: Bundle, old: str, new: str) -> Bundle:
    """Renames a delta in a task plan (in place) and in a bundle's tensor keys (a new Bundle)."""
    plan["deltas"][new] = plan["deltas"].pop(old)
    for task in plan["tasks"].values():
        for term in task["deltas"]:
            if term["name"] == old:
                term["name"] = new
    tensors = {(new + k[len(old):] if split_key(k)[0] == old else k): v for k, v in bundle.tensors.items()}
    return Bundle(bundle.path, bundle.manifest, tensors)


def merge_plans(parts: list[tuple[dict[str, Any], Bundle]], report: dict[str, list[str]]
                ) -> tuple[dict[str, Any], list[tuple[str, Bundle]]]:
    """Merges bundle plans into one plan (rules in the module docstring).

    Returns:
        ``(plan dict, [(task, bundle with final delta names)])``.

    Raises:
        BundleError: A task in two bundles, or different base transforms.
    """
    merged: dict[str, Any] | None = None
    owners: dict[str, tuple[dict[str, Any], Bundle]] = {}
    owner_task: dict[str, str] = {}
    task_files: dict[str, Path] = {}
    loaded: list[tuple[str, Bundle]] = []
    for plan, bundle in parts:
        if not plan["tasks"]:
            continue
        (task,) = plan["tasks"]
        if task in task_files:
            raise BundleError(Diagnostic(f"task '{task}' is in two bundles: {task_files[task]} and {bundle.path}",
                                         obj=str(bundle.path), hint="load one of them"))
        task_files[task] = bundle.path
        if merged is None:
            merged = {**plan, "deltas": {}, "tasks": {}}
        elif plan["base"] != merged["base"]:
            first_file = next(iter(task_files.values()))
            raise BundleError(Diagnostic(f"bundle quantizes the base differently from {first_file}",
                                         obj=str(bundle.path), hint="load bundles with the same base transforms"))
        for name in list(plan["deltas"]):
            if name in owners and _same_delta(*owners[name], plan, bundle, name):
                report["shared"].append(f"delta '{name}': equal in tasks '{owner_task[name]}' and '{task}', "
                                        "loaded once and shared")
                continue
            if name in owners:
                new, n = f"{name}_{task}", 2
                while new in owners or new in plan["deltas"]:
                    new, n = f"{name}_{task}_{n}", n + 1
                bundle = _rename(plan, bundle, name, new)
                report["renamed"].append(f"delta '{name}' of task '{task}' ({bundle.path.name}) differs from the "
                                         f"one already loaded: renamed '{new}'")
                name = new
            owners[name] = (plan, bundle)
            owner_task[name] = task
            merged["deltas"][name] = plan["deltas"][name]
        merged["tasks"][task] = plan["tasks"][task]
        loaded.append((task, bundle))
    if merged is None:
        raise BundleError(Diagnostic("nothing in these bundles fits this model", obj=str(parts[0][1].path),
                                     notes=tuple(report["skipped"][:5])))
    merged["deltas"] = dict(sorted(merged["deltas"].items()))
    return merged, loaded


def _copy_tensors(adapted: BundleAdapted, loaded: list[tuple[str, Bundle]]) -> None:
    """Copies every bundle's tensors into the patched model's delta parameters and buffers.

    Every tensor of every loaded task must be written: the parts were built
    without initial values (``deferred_values``), so one left out would hold
    whatever the allocation held.
    """
    copied: set[str] = set()
    with torch.no_grad():
        for task, bundle in loaded:
            targets = adapted.bundle_tensors(task)
            missing = sorted(set(targets) - set(bundle.tensors) - copied)
            if missing:
                raise BundleError(Diagnostic(f"the bundle has no values for '{missing[0]}'",
                                             obj=str(bundle.path), notes=tuple(missing[1:5])))
            for key, value in bundle.tensors.items():
                if key in copied:
                    continue
                target = targets.get(key)
                if target is None or tuple(target.shape) != tuple(value.shape):
                    raise BundleError(Diagnostic(f"tensor '{key}' does not fit the patched model",
                                                 obj=str(bundle.path)))
                target.copy_(value.to(device=target.device, dtype=target.dtype))
                copied.add(key)


def load(model: nn.Module, path_or_paths: Any, *, strict: bool = True, task: str | None = None,
         tokenizer: Any = None, keep_base: bool = False) -> BundleAdapted:
    """Loads task bundles onto a base model, from the bundles alone (no spec file).

    Args:
        model: The base model (not adapted yet), patched in place.
        path_or_paths: One bundle path or several; their tasks share one patch
            and switch with ``use()``.
        strict: Refuse a bundle whose model fingerprint differs (naming the
            first differing modules). False loads the sites that fit this
            model and lists the rest in ``load_report["skipped"]`` (and warns).
        task: The task to activate (default: the first bundle's).
        tokenizer: Only initialises prompts before their bundle values
            are copied in; without one a placeholder stands in.
        keep_base: As in ``apply`` (quantized bases).

    Returns:
        A :class:`BundleAdapted` with the bundles' tasks; ``load_report``
        says what was shared, renamed or skipped.

    Raises:
        BundleError: A missing, truncated, corrupted or foreign file, a
            bundle for another model (strict), or bundles that cannot be
            combined. The model is left exactly as it was.
    """
    from adaptlang.plan.plan import Plan
    from adaptlang.plan.signature import signature_of
    from adaptlang.runtime.adapted import apply as runtime_apply
    from adaptlang.runtime.layers import deferred_values
    from adaptlang.runtime.transaction import check_not_adapted

    paths = _paths(path_or_paths)
    check_not_adapted(model)
    bundles = [read_bundle(p) for p in paths]
    sig = signature_of(model)
    report: dict[str, list[str]] = {"shared": [], "renamed": [], "skipped": [], "mismatch": []}
    parts = [_fit(b, sig, strict, report) for b in bundles]
    merged, loaded = merge_plans(parts, report)
    plan = Plan(merged)
    first = task or loaded[0][0]
    with deferred_values():  # every value is about to be overwritten: drawing random ones is waste
        adapted = runtime_apply(model, plan, task=first, tokenizer=tokenizer or PlaceholderTokenizer(),
                                keep_base=keep_base, adapted_cls=BundleAdapted, signature=sig)
    assert isinstance(adapted, BundleAdapted)
    try:
        _copy_tensors(adapted, loaded)
    except BaseException as exc:
        adapted.remove()
        if isinstance(exc, AdaptError) or not isinstance(exc, Exception):
            raise  # ours, or an interrupt: as is
        raise BundleError(Diagnostic(f"copying bundle tensors failed: {type(exc).__name__}: {exc}",
                                     obj=str(paths[0]))) from exc
    adapted._set_origin({t: b.provenance for t, b in loaded}, describe_structure(sig))
    adapted.load_report = {k: v for k, v in report.items() if v}
    if report["skipped"]:
        warnings.warn(f"adaptlang.load: {len(report['skipped'])} part(s) of the bundles do not fit this model "
                      "and were left out; see load_report['skipped']", stacklevel=2)
    elif report["mismatch"]:
        warnings.warn("adaptlang.load: the bundles were made for a model with another fingerprint; every site "
                      "fits this one; see load_report['mismatch']", stacklevel=2)
    return adapted
