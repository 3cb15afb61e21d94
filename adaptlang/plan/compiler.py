"""``compile_plan``: bind a checked spec to a model signature and count everything.

Compiling never touches tensors. The model is reduced to its
:class:`~adaptlang.plan.signature.ModelSignature` (built on the meta device),
each delta's selectors are resolved by the selector engine, per-site
properties are resolved (``for`` overrides, last match wins), each site is
checked against what its delta kind can act on, and every count comes from
:mod:`adaptlang.plan.accounting`. All bind errors are collected before one
:class:`~adaptlang.errors.BindError` is raised, so a user fixes a spec in one
round trip.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from adaptlang.errors import AdaptError, BindError, Diagnostic, UsageError
from adaptlang.plan import accounting as acc
from adaptlang.plan.binder import Binder, bind_delta, bind_quantize
from adaptlang.plan.plan import FORMAT_VERSION, Plan
from adaptlang.plan.ties import site_slots
from adaptlang.spec.model import Spec

__all__ = ["bind_spec", "compile_plan", "load_spec_for_compile", "resolve_signature"]


def compile_plan(spec_or_path: Any, model: Any = None, *, name: str | None = None,
                 overrides: Mapping[str, float] | None = None, head: str | None = None,
                 num_labels: int | None = None, allow_factory: bool | None = None) -> Plan:
    """Binds a spec to a model and returns the plan.

    Args:
        spec_or_path: A :class:`Spec`, a ``.adapt`` path, or spec text.
        model: A preset name (``"llama"``), a Hugging Face model directory,
            ``"pkg.module:factory"``, an ``nn.Module`` or a ``ModelSignature``.
            Defaults to the spec's ``model`` statement.
        name: The model's name in the plan (defaults to the preset or class name).
            A label for people: it is not part of ``plan_sha256``.
        overrides: ``let`` constants to replace (``--set r=16``), by name.
        head: Build a model reference with this task head (a key of
            :data:`adaptlang.plan.models.HEADS`, as ``--head``); not for an
            ``nn.Module``, a signature or a factory, which come with their own.
        num_labels: The classification head's label count (``--num-labels``;
            implies ``head="sequence-classification"``).
        allow_factory: Whether a ``pkg.module:factory`` reference may be
            imported and run. None (the default) follows where the reference
            came from: ``model`` is the caller's own and runs; the spec's
            ``model`` statement was read from a file and is refused. A
            caller passing a ``model`` it read from a file (a lock, an
            adapter config) passes False; True allows both (``--allow-factory``).

    Returns:
        The :class:`Plan`.

    Raises:
        FactoryRefusedError: A factory reference that is not allowed (a UsageError).
        SpecError: The spec does not parse or check.
        UsageError: No model given anywhere, an unknown model reference, or a
            head for a model that is already built.
        BindError: Selectors that match nothing, deltas on modules they cannot
            act on, missing roles; every such problem at once.
    """
    spec = load_spec_for_compile(spec_or_path, overrides)
    from_spec = model is None
    allowed = (not from_spec) if allow_factory is None else bool(allow_factory)
    sig = resolve_signature(spec.model if from_spec else model, name, head=head, num_labels=num_labels,
                            allow_factory=allowed, source=spec.path if from_spec else None,
                            what="its model statement" if from_spec else "the model reference")
    return bind_spec(spec, sig)


def load_spec_for_compile(spec_or_path: Any, overrides: Mapping[str, float] | None = None) -> Spec:
    """Returns the checked spec, re-lowered with ``overrides`` when there are any.

    Constants feed every value derived from them (``alpha 2 * r``), so an
    override has to go through lowering again rather than patch the Spec.
    """
    from adaptlang.spec import load_spec

    if isinstance(spec_or_path, Spec):
        if not overrides:
            return spec_or_path
        source: Any = Path(spec_or_path.path)
        if not source.is_file():
            source = spec_or_path.sources.get(spec_or_path.path)
            if source is None:
                raise UsageError(Diagnostic(
                    "cannot override constants of a spec without its source", obj="overrides",
                    hint="pass the spec's path or text instead of the Spec object"))
        spec_or_path = source
    if isinstance(spec_or_path, os.PathLike):
        spec_or_path = Path(spec_or_path)
    return load_spec(spec_or_path, constants=dict(overrides) if overrides else None)


def resolve_signature(model: Any, name: str | None = None, *, head: str | None = None,
                      num_labels: int | None = None, allow_factory: bool = True,
                      source: str | None = None, what: str = "the model reference") -> Any:
    """Returns the signature of a model given any way ``compile_plan`` accepts.

    ``head`` and ``num_labels`` are as in :func:`compile_plan`; ``allow_factory``,
    ``source`` and ``what`` as in :func:`adaptlang.plan.models.load_model` (pass
    False for a reference read from a file).

    Raises:
        FactoryRefusedError: A factory reference with ``allow_factory`` False.
        UsageError: ``model`` is None (no ``--model`` and no ``model``
            statement), or ``head``/``num_labels`` with a built model.
    """
    from adaptlang.plan.signature import ModelSignature, signature_of

    if model is None:
        raise UsageError(Diagnostic(
            "no model to compile against", obj="model",
            hint="add a `model NAME` statement to the spec, or pass --model / model=..."))
    if head is None and num_labels is not None:
        head = "sequence-classification"
    if head is not None and (isinstance(model, ModelSignature) or hasattr(model, "named_modules")):
        raise UsageError(Diagnostic(
            f"a head ('{head}') applies to a model reference, not to a built {type(model).__name__}",
            obj="head", hint="build the module with its head, or pass the preset/directory name"))
    if isinstance(model, ModelSignature):
        return model
    if hasattr(model, "named_modules"):
        return signature_of(model, name or type(model).__name__)
    from adaptlang.plan.presets import PRESETS
    from adaptlang.plan.signature import load_preset_signature

    if isinstance(model, str) and model in PRESETS:
        # Presets never change: their signature is built once (and cached on disk).
        sig = load_preset_signature(model, head, num_labels)
        return sig if name in (None, sig.name) else dataclasses.replace(sig, name=name)
    from adaptlang.plan.models import load_model

    module, loaded_name = load_model(str(model), device="meta", head=head, num_labels=num_labels,
                                     allow_factory=allow_factory, source=source, what=what)
    return signature_of(module, name or _portable_name(loaded_name))


def _portable_name(name: str) -> str:
    """Keeps absolute paths out of plans: a model directory is named by its last part."""
    return Path(name).name if os.path.isabs(name) else name


def bind_spec(spec: Spec, sig: Any) -> Plan:
    """Binds every delta, base transform and task of ``spec`` to ``sig``.

    Args:
        spec: A checked spec.
        sig: The model's signature.

    Returns:
        The plan.

    Raises:
        BindError: Every binding problem found, each with its span and source line.
    """
    binder = Binder(spec, sig)
    quantize = bind_quantize(binder)
    binder.quantized = {acc.find_canonical_param(sig, s["path"], s["param"]) for s in quantize}
    deltas = {}
    for name, delta in spec.deltas.items():
        sites = bind_delta(binder, delta)
        deltas[name] = {"kind": delta.kind, "params": sum(s["params"] for s in sites),
                        "site_count": len(sites), "sites": sites}
    tasks = {name: _bind_task(binder, task, deltas) for name, task in spec.tasks.items()}
    if binder.diagnostics:
        raise _with_sources(BindError(binder.diagnostics), spec)
    packed = {f"{s['path']}.{s['param']}" if s["path"] else s["param"]: s["bytes_after"] for s in quantize}
    base_bytes = acc.sum_param_bytes(acc.list_unique_params(sig), packed)
    for task in tasks.values():
        task["memory"] = acc.estimate_plan_task_memory(sig, task, deltas, base_bytes)
    return Plan({
        "adaptlang": spec.version,
        "format": FORMAT_VERSION,
        "model": {"name": sig.name, "cls": sig.cls, "family": sig.family,
                  "fingerprint": sig.fingerprint, "params": sig.total_params,
                  "dtype": acc.find_dominant_dtype(sig)},
        "deltas": deltas,
        "base": {"quantize": quantize},
        "tasks": tasks,
    })


def _bind_task(binder: Binder, task: Any, deltas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Returns a task's plan section (without memory); records tune deltas that clash."""
    terms = [{"name": t.delta, "weight": float(t.weight), "frozen": bool(t.frozen)} for t in task.terms]
    # Slots, not tensors: two tune deltas may each untie one name of a tied tensor (own copies),
    # but one slot can hold one copy.
    owners: dict[str, str] = {}
    for term in terms:
        if deltas[term["name"]]["kind"] != "tune":
            continue
        clash = None
        for site in deltas[term["name"]]["sites"]:
            for slot in site_slots(site):
                other = owners.setdefault(slot, term["name"])
                if other != term["name"] and clash is None:
                    clash = (other, slot)
        if clash is not None:
            binder.error(f"task '{task.name}' uses two tune deltas, '{clash[0]}' and '{term['name']}', "
                         f"on '{clash[1]}'", task.span, hint="a parameter can have one trained copy per task")
    counts = acc.count_task(terms, {name: d["params"] for name, d in deltas.items()})
    return {"deltas": terms, **counts}


def _with_sources(error: AdaptError, spec: Spec) -> AdaptError:
    """Attaches source lines to every diagnostic whose span is in one of the spec's files."""
    diags = []
    for diag in error.diagnostics:
        text = spec.sources.get(diag.span.file) if diag.span is not None else None
        diags.append(diag.with_source(text) if text is not None else diag)
    return type(error)(diags)
