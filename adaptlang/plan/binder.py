"""Binding one spec's deltas and base transforms to a model signature.

The :class:`Binder` holds the spec, the signature and the diagnostics found
so far; :func:`bind_delta` and :func:`bind_quantize` turn each delta or
``quantize`` block into its plan sites (model order), resolving ``for``
overrides per site (:class:`Overrides`, last match wins) and checking that
each kind can act on each module it selects. Every problem is recorded, not
raised, so the compiler can report all of them at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from adaptlang.errors import BindError, Diagnostic
from adaptlang.plan import accounting as acc
from adaptlang.plan.ties import group_slots, tie_group, tie_groups

if TYPE_CHECKING:
    from adaptlang.spec.model import Spec

__all__ = ["Binder", "Overrides", "bind_delta", "bind_quantize", "report_unfit"]

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
        self.ties = tie_groups(sig)  # tied tensor (first name) -> all its names
        # What each `for` selector matches, by selector identity: one entry per override for this
        # compile (unbounded here, freed with the binder), so sites x overrides stays linear.
        self.selector_memo: dict[int, Any] = {}

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
                matched = any(selector_matches_path(self.binder.sig, override.selector, p, self.binder.selector_memo)
                              for p in paths)
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
    hint = f"{delta.kind} acts on {kinds}; narrow the selector (e.g. `... is Linear`)"
    if delta.kind == "adapter" and delta.placement == "parallel":
        hint = ("a parallel adapter adds up(act(down(x))) to M(x), so M's input and output widths must be "
                "equal: place it on a block (e.g. `layers[*].mlp`), or use after/before")
    report_unfit(binder, owner, delta.on.span, unfit, hint)
    if sites:
        overrides.report_unused(len(sites))
    return sites


def _make_adapter(binder: Binder, delta: Any, owner: str, info: Any, props: dict[str, Any],
                  unfit: list[tuple[str, str]]) -> dict[str, Any] | None:
    """Returns an adapter site, or None after recording why the module cannot take one."""
    fin, fout = info.in_features, info.out_features
    if fin is None or fout is None or (delta.placement == "parallel" and fin != fout):
        why = (f"{info.cls}, widths unknown" if fin is None or fout is None
               else f"{info.cls}, in {fin} != out {fout}")
        unfit.append((info.path, why))
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
    selected, infos = [], {}
    for path, info in binder.sig.modules.items():
        inside = bool(roots) and _under_any(path, roots)
        for p in info.params:
            if not inside and (path, p.name) not in wanted:
                continue
            if acc.find_canonical_param(binder.sig, path, p.name) in binder.quantized:
                unfit.append((f"{path}.{p.name}", "quantized"))
                continue
            selected.append((path, p.name))
            infos[(path, p.name)] = p
    sites = []
    # A tied tensor is one parameter: one site (its first selected name) whose delta every selected
    # name shares; names left out keep the original (see adaptlang.plan.ties).
    for (path, name), tie_fields in group_slots(binder.sig, selected, binder.ties):
        p = infos[(path, name)]
        if delta.kind == "tune":
            site = acc.make_tune_site(path, name, tuple(p.shape), p.dtype)
        else:
            props = overrides.resolve(_base_props(delta, "sparse"), path, name)
            site = acc.make_sparse_site(path, name, tuple(p.shape), props)
        sites.append({**site, **tie_fields})
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
            elif len(tie_group(binder.sig, f"{path}.weight", binder.ties)) > 1:
                # The other module keeps the tensor: nothing is saved, and freeing it would break that module.
                others = [n for n in tie_group(binder.sig, f"{path}.weight", binder.ties) if n != f"{path}.weight"]
                binder.error(f"'{path}.weight' is tied to {', '.join(others)} and cannot be quantized",
                             q.on.span, hint="exclude it from `quantize` (e.g. `... except lm_head`)")
            else:
                props = overrides.resolve(base, path)
                by_path[path] = acc.make_quantize_site(path, info.cls, tuple(weight.shape),
                                                       weight.dtype, q.format, props)
        report_unfit(binder, owner, q.on.span, unfit, "quantize acts on Linear modules")
        if by_path:
            overrides.report_unused(len(by_path))
    order = {path: i for i, path in enumerate(binder.sig.modules)}
    return sorted(by_path.values(), key=lambda site: order[site["path"]])
