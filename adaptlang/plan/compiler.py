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
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from adaptlang.errors import AdaptError, BindError, Diagnostic, UsageError
from adaptlang.plan import accounting as acc
from adaptlang.plan.plan import FORMAT_VERSION, Plan
from adaptlang.spec.model import Spec

__all__ = ["bind_spec", "compile_plan", "load_spec_for_compile", "resolve_signature"]


def compile_plan(spec_or_path: Any, model: Any = None, *, name: str | None = None,
                 overrides: Mapping[str, float] | None = None) -> Plan:
    """Binds a spec to a model and returns the plan.

    Args:
        spec_or_path: A :class:`Spec`, a ``.adapt`` path, or spec text.
        model: A preset name (``"llama"``), a Hugging Face model directory,
            ``"pkg.module:factory"``, an ``nn.Module`` or a ``ModelSignature``.
            Defaults to the spec's ``model`` statement.
        name: The model's name in the plan (defaults to the preset or class name).
        overrides: ``let`` constants to replace (``--set r=16``), by name.

    Returns:
        The :class:`Plan`.

    Raises:
        SpecError: The spec does not parse or check.
        UsageError: No model given anywhere, or an unknown model reference.
        BindError: Selectors that match nothing, deltas on modules they cannot
            act on, missing roles; every such problem at once.
    """
    spec = load_spec_for_compile(spec_or_path, overrides)
    sig = resolve_signature(model if model is not None else spec.model, name)
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
    if not overrides:
        return load_spec(spec_or_path)
    if "constants" not in inspect.signature(load_spec).parameters:
        raise UsageError(Diagnostic("this build cannot override let constants", obj="--set"))
    return load_spec(spec_or_path, constants=dict(overrides))


def resolve_signature(model: Any, name: str | None = None) -> Any:
    """Returns the signature of a model given any way ``compile_plan`` accepts.

    Raises:
        UsageError: ``model`` is None (no ``--model`` and no ``model`` statement).
    """
    from adaptlang.plan.signature import ModelSignature, signature_of

    if model is None:
        raise UsageError(Diagnostic(
            "no model to compile against", obj="model",
            hint="add a `model NAME` statement to the spec, or pass --model / model=..."))
    if isinstance(model, ModelSignature):
        return model
    if hasattr(model, "named_modules"):
        return signature_of(model, name or type(model).__name__)
    from adaptlang.plan.presets import PRESETS
    from adaptlang.plan.signature import load_preset_signature

    if isinstance(model, str) and model in PRESETS:
        # Presets never change: their signature is built once (and cached on disk).
        sig = load_preset_signature(model)
        return sig if name in (None, sig.name) else dataclasses.replace(sig, name=name)
    from adaptlang.plan.models import load_model

    module, loaded_name = load_model(str(model), device="meta")
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


def _bind_task(binder: "Binder", task: Any, deltas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Returns a task's plan section (without memory); records tune deltas that clash."""
    terms = [{"name": t.delta, "weight": float(t.weight), "frozen": bool(t.frozen)} for t in task.terms]
    owners: dict[tuple[str, str], str] = {}
    for term in terms:
        if deltas[term["name"]]["kind"] != "tune":
            continue
        for site in deltas[term["name"]]["sites"]:
            other = owners.setdefault(acc.find_canonical_param(binder.sig, site["path"], site["param"]),
                                      term["name"])
            if other != term["name"]:
                binder.error(f"task '{task.name}' uses two tune deltas, '{other}' and '{term['name']}', "
                             f"on '{site['path']}.{site['param']}'", task.span,
                             hint="a parameter can have one trained copy per task")
                break
    counts = acc.count_task(terms, {name: d["params"] for name, d in deltas.items()})
    return {"deltas": terms, **counts}


def _with_sources(error: AdaptError, spec: Spec) -> AdaptError:
    """Attaches source lines to every diagnostic whose span is in one of the spec's files."""
    diags = []
    for diag in error.diagnostics:
        text = spec.sources.get(diag.span.file) if diag.span is not None else None
        diags.append(diag.with_source(text) if text is not None else diag)
    return type(error)(diags)


# ----------------------------------------------------------------------
# Binding deltas to sites.

#: What each delta kind can act on, by class name anywhere in the module's MRO.
_ACTS_ON = {
    "lora": ("Linear", "Conv1D", "Embedding"),
    "ia3": ("Linear", "Conv1D"),
    "quantize": ("Linear",),
}

#: How many unfit modules one diagnostic lists before "and N more".
_LIST_LIMIT = 5


class Binder:
    """Binding state for one spec and one signature: lookups and collected diagnostics.

    Args:
        spec: The checked spec.
        sig: The model's signature.
    """

    def __init__(self, spec: Spec, sig: Any):
        self.spec = spec
        self.sig = sig
        self.diagnostics: list[Diagnostic] = []
        self.quantized: set[tuple[str, str]] = set()

    def error(self, message: str, span: Any, hint: str | None = None, notes: tuple[str, ...] = ()) -> None:
        """Records one bind error."""
        self.diagnostics.append(Diagnostic(message, span=span, hint=hint, notes=notes))

    def attempt(self, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """Calls ``fn``; a BindError's diagnostics are recorded and ``default`` returned."""
        try:
            return fn(*args)
        except BindError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return default

    def match_modules(self, selector: Any) -> list[str]:
        """Module paths a selector matches, model order; [] after recording an error."""
        from adaptlang.plan.select import match_modules

        return self.attempt(match_modules, self.sig, selector, default=[])

    def match_targets(self, selector: Any) -> tuple[list[str], list[tuple[str, str]]]:
        """``(modules, params)`` a selector matches; empty after recording an error."""
        from adaptlang.plan.select import match_targets

        return self.attempt(match_targets, self.sig, selector, default=([], []))

    def param_info(self, path: str, param: str) -> Any:
        """Returns the ParamInfo of ``path``'s direct parameter ``param``, or None."""
        return next((p for p in self.sig.modules[path].params if p.name == param), None)


class Overrides:
    """Resolves ``KEY VALUE for SELECTOR`` per site and remembers which ever matched.

    Args:
        binder: The binding state (signature, diagnostics).
        owner: What the overrides belong to, for messages (``lora 'attn'``).
        overrides: In written order; the last matching one wins.
    """

    def __init__(self, binder: Binder, owner: str, overrides: list[Any]):
        self.binder = binder
        self.owner = owner
        self.overrides = overrides
        self.hits = [False] * len(overrides)
        self.broken = [False] * len(overrides)

    def resolve(self, base: dict[str, Any], path: str, param: str | None = None) -> dict[str, Any]:
        """Returns ``base`` with every override matching this site applied, in order."""
        from adaptlang.plan.select import selector_matches_path

        props = dict(base)
        for i, override in enumerate(self.overrides):
            if self.broken[i]:
                continue
            paths = [path] if param is None else [path, f"{path}.{param}" if path else param]
            try:
                matched = any(selector_matches_path(self.binder.sig, override.selector, p) for p in paths)
            except BindError as exc:
                self.broken[i] = True
                self.binder.diagnostics.extend(exc.diagnostics)
                continue
            if matched:
                self.hits[i] = True
                props[override.key] = override.value
                # size and reduction are two spellings of one width: the later wins.
                other = {"size": "reduction", "reduction": "size"}.get(override.key)
                if other in props:
                    props[other] = None
        return props

    def report_unused(self, site_count: int) -> None:
        """Records an error for each override that matched none of the sites."""
        for i, override in enumerate(self.overrides):
            if not self.hits[i] and not self.broken[i]:
                self.binder.error(
                    f"this `{override.key}` override matches none of the {site_count} sites of {self.owner}",
                    override.span, hint="check the `for` selector against the delta's placement")


def report_unfit(binder: Binder, owner: str, span: Any, unfit: list[tuple[str, str]], why: str) -> None:
    """Records one error for the matched modules a delta cannot act on.

    Args:
        binder: The binding state.
        owner: ``lora 'attn'``.
        span: The placement selector's span.
        unfit: ``(path, class name)`` of each module at fault.
        why: What the kind can act on, as a hint.
    """
    if not unfit:
        return
    if len(unfit) == 1:
        path, cls = unfit[0]
        message = f"{owner} cannot act on '{path}' ({cls})"
        notes: tuple[str, ...] = ()
    else:
        message = f"{owner} cannot act on {len(unfit)} of the modules its selector matches"
        notes = tuple(f"'{p}' ({c})" for p, c in unfit[:_LIST_LIMIT])
        if len(unfit) > _LIST_LIMIT:
            notes += (f"... and {len(unfit) - _LIST_LIMIT} more",)
    binder.error(message, span, hint=why, notes=notes)


def _base_props(item: Any, kind: str) -> dict[str, Any]:
    """Returns the overridable properties of a delta or quantize block, as written."""
    from adaptlang.spec.model import OVERRIDABLE

    return {key: getattr(item, key) for key in OVERRIDABLE[kind]}


def _acts_on(info: Any, kind: str) -> bool:
    """Whether a module's class (or a base class) is one ``kind`` can act on."""
    return any(cls in info.bases for cls in _ACTS_ON[kind])


def bind_delta(binder: Binder, delta: Any) -> list[dict[str, Any]]:
    """Returns a delta's sites in model order, recording any bind errors."""
    owner = f"{delta.kind} '{delta.name}'"
    if delta.kind == "prompt":
        return _bind_prompt(binder, delta, owner)
    if delta.kind == "tune":
        return _bind_params(binder, delta, owner, delta.params)
    if delta.kind == "sparse":
        return _bind_params(binder, delta, owner, delta.on)
    overrides = Overrides(binder, owner, delta.overrides)
    sites, unfit = [], []
    base = _base_props(delta, delta.kind)
    for path in binder.match_modules(delta.on):
        info = binder.sig.modules[path]
        if delta.kind != "adapter" and not _acts_on(info, delta.kind):
            unfit.append((path, info.cls))
            continue
        props = overrides.resolve(base, path)
        if delta.kind == "adapter":
            site = _make_adapter(binder, delta, owner, info, props, unfit)
        elif delta.kind == "lora":
            site = acc.make_lora_site(path, info.cls, info.in_features, info.out_features, props)
        else:
            site = acc.make_ia3_site(path, info.cls, info.in_features, info.out_features, props)
        if site is not None:
            sites.append(site)
    kinds = ", ".join(_ACTS_ON.get(delta.kind, ("modules with known widths",)))
    report_unfit(binder, owner, delta.on.span, unfit, f"{delta.kind} acts on {kinds}; "
                 "narrow the selector (e.g. `... is Linear`)")
    if sites:
        overrides.report_unused(len(sites))
    return sites


def _make_adapter(binder: Binder, delta: Any, owner: str, info: Any, props: dict[str, Any],
                  unfit: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Returns an adapter site, or None after recording why the module cannot take one."""
    fin, fout = info.in_features, info.out_features
    if fin is None or fout is None or (delta.placement == "parallel" and fin != fout):
        unfit.append((info.path, info.cls if fin is not None and fout is not None
                      else f"{info.cls}, widths unknown"))
        return None
    dim = fin if delta.placement == "before" else fout
    size = props["size"] if props["size"] is not None else acc.size_from_reduction(dim, props["reduction"])
    if size < 1:
        binder.error(f"{owner}: reduction {props['reduction']:g} leaves no width at '{info.path}' "
                     f"(dim {dim})", delta.span, hint="use a smaller reduction or set `size`")
        return None
    return acc.make_adapter_site(info.path, info.cls, delta.placement, dim, int(size), props)


def _bind_prompt(binder: Binder, delta: Any, owner: str) -> list[dict[str, Any]]:
    """A prompt's one site: the input embedding (``@embed``, else the first Embedding)."""
    sig = binder.sig
    paths = list(sig.roles.get("embed", ())) or [
        p for p, info in sig.modules.items() if "Embedding" in info.bases][:1]
    if not paths:
        binder.error(f"{owner} needs an input embedding, and the model has none", delta.span,
                     notes=(f"model class: {sig.cls}",))
        return []
    info = sig.modules[paths[0]]
    weight = binder.param_info(info.path, "weight")
    dim = info.out_features or (weight.shape[-1] if weight is not None else None)
    if dim is None:
        binder.error(f"{owner}: cannot tell the width of '{info.path}' ({info.cls})", delta.span)
        return []
    return [acc.make_prompt_site(info.path, info.cls, delta.tokens, int(dim),
                                 delta.init.kind, delta.init.text)]


def _bind_params(binder: Binder, delta: Any, owner: str, selector: Any) -> list[dict[str, Any]]:
    """Sites of ``tune`` (a module: all its parameters) and ``sparse`` (a module: its 2-D weight)."""
    modules, params = binder.match_targets(selector)
    wanted, unfit = set(params), []
    roots = set()
    for path in modules:
        if delta.kind == "tune":
            roots.add(path)
            continue
        weight = binder.param_info(path, "weight")
        if weight is not None and len(weight.shape) == 2:
            wanted.add((path, "weight"))
        else:
            unfit.append((path, binder.sig.modules[path].cls))
    report_unfit(binder, owner, selector.span, unfit,
                 "sparse acts on modules with a 2-D weight, or on parameters named in the selector")
    overrides = Overrides(binder, owner, delta.overrides)
    sites, seen = [], set()
    for path, info in binder.sig.modules.items():
        inside = bool(roots) and _under_any(path, roots)
        for p in info.params:
            if not inside and (path, p.name) not in wanted:
                continue
            key = acc.find_canonical_param(binder.sig, path, p.name)
            if key in seen:
                continue  # a tied parameter is one parameter
            seen.add(key)
            if key in binder.quantized:
                unfit.append((f"{path}.{p.name}", "quantized"))
            elif delta.kind == "tune":
                sites.append(acc.make_tune_site(path, p.name, tuple(p.shape), p.dtype))
            else:
                props = overrides.resolve(_base_props(delta, "sparse"), path, p.name)
                sites.append(acc.make_sparse_site(path, p.name, tuple(p.shape), props))
    quantized = [u for u in unfit if u[1] == "quantized"]
    report_unfit(binder, owner, selector.span, quantized,
                 "a quantized weight cannot be re-trained; exclude it from `quantize` or from this delta")
    if sites:
        overrides.report_unused(len(sites))
    return sites


def _under_any(path: str, roots: set[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or inside one (``""`` is the root)."""
    if "" in roots or path in roots:
        return True
    while "." in path:
        path = path.rpartition(".")[0]
        if path in roots:
            return True
    return False


def bind_quantize(binder: Binder) -> list[dict[str, Any]]:
    """Returns the base's quantized weights in model order, recording any bind errors."""
    by_path: dict[str, dict[str, Any]] = {}
    for q in binder.spec.quantize:
        owner = f"quantize {q.format}"
        overrides = Overrides(binder, owner, q.overrides)
        unfit = []
        base = _base_props(q, "quantize")
        for path in binder.match_modules(q.on):
            info = binder.sig.modules[path]
            weight = binder.param_info(path, "weight")
            if not _acts_on(info, "quantize") or weight is None or len(weight.shape) != 2:
                unfit.append((path, info.cls))
            elif path in by_path:
                binder.error(f"'{path}' is quantized twice", q.on.span,
                             hint="each weight can have one quantize block")
            else:
                props = overrides.resolve(base, path)
                by_path[path] = acc.make_quantize_site(path, info.cls, tuple(weight.shape),
                                                       weight.dtype, q.format, props)
        report_unfit(binder, owner, q.on.span, unfit, "quantize acts on Linear modules")
        if by_path:
            overrides.report_unused(len(by_path))
    order = {path: i for i, path in enumerate(binder.sig.modules)}
    return sorted(by_path.values(), key=lambda site: order[site["path"]])
