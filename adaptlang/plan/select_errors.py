"""Explaining selectors: rendering them back to text, and why one matched nothing.

Used by :mod:`adaptlang.plan.select` on its error paths only, so the cost of
comparing against every path (difflib) is paid only when a spec is wrong.
A selector that matches nothing says which segment the model does not have
(``did you mean 'q_proj'?``) and lists the nearest real paths; a class filter
that removed every match lists the classes it saw; an index out of range
names the list and its length.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from fnmatch import fnmatchcase
from typing import Any, Iterable

from adaptlang.errors import Diagnostic, did_you_mean
from adaptlang.syntax import ast

__all__ = [
    "render_elements",
    "excluded_all_diagnostic", "explain_empty", "index_diagnostic", "render_selector",
    "render_selpath", "role_diagnostic",
]

#: How many nearest paths an error lists.
_NEAREST = 5

#: Module names of transformers' task heads, and the ``--head`` that builds each.
#: A selector naming one the model lacks is usually a model built without
#: that head (a bare ``BertModel`` folder), not a typo: the error says how to add it.
_HEAD_MODULES = {"classifier": "sequence-classification", "score": "sequence-classification",
                 "lm_head": "causal-lm", "qa_outputs": None}


def render_selpath(path: ast.SelPath) -> str:
    """Renders one selector path back to text (``layers[-2:].{q_proj, v_proj} is Linear``)."""
    text = ("/" if path.anchored else "") + render_elements(path.elements)
    return text + (" is " + " | ".join(path.classes) if path.classes else "")


def render_elements(elements: Iterable[Any]) -> str:
    out = ""
    for el in elements:
        if isinstance(el, ast.Index):
            out += "[" + ", ".join(_render_item(i) for i in el.items) + "]"
            continue
        out += "." if out else ""
        if isinstance(el, ast.NamePat):
            out += el.pattern
        elif isinstance(el, ast.Role):
            out += f"@{el.name}"
        elif isinstance(el, ast.Alt):
            out += "{" + ", ".join(render_elements(o) for o in el.options) + "}"
        else:
            out += "**" if isinstance(el, ast.AnyMany) else "*"
    return out


def _render_item(item: Any) -> str:
    if not isinstance(item, ast.Slice):
        return str(item)
    start, stop = ("" if v is None else str(v) for v in (item.start, item.stop))
    return f"{start}:{stop}" + (f":{item.step}" if item.step is not None else "")


def render_selector(selector: ast.Selector) -> str:
    """Renders a whole selector back to text (for messages)."""
    text = ", ".join(render_selpath(p) for p in selector.include)
    if selector.exclude:
        text += " except " + ", ".join(render_selpath(p) for p in selector.exclude)
    return text


def role_diagnostic(sig: Any, el: ast.Role) -> Diagnostic:
    """An unknown role: lists the roles this model has."""
    have = ", ".join(f"@{r}" for r in sig.roles) or "none"
    best = did_you_mean(el.name, sig.roles)
    return Diagnostic(
        f"{sig.name} ({sig.family} family) has no role '@{el.name}'", span=el.span,
        hint=best.replace("'", "'@", 1) if best else "use a path instead, e.g. `layers[*].mlp`",
        notes=(f"roles of {sig.name}: {have}",))


def excluded_all_diagnostic(sig: Any, selector: ast.Selector) -> Diagnostic:
    """Every match of ``selector`` is removed by its ``except`` part."""
    return Diagnostic(
        f"'{render_selector(selector)}' matches nothing in {sig.name}: its exceptions remove every match",
        span=selector.span, hint="narrow the `except` part")


def index_diagnostic(path: ast.SelPath, trace: dict[int, Any], matched: bool) -> Diagnostic | None:
    """Returns an error for an index no list had room for, or one applied to no list at all.

    An explicit index (``[40]``) is an error when it is out of range in every
    list it was applied to, even if other items matched: it names nothing.
    """
    for el, lists, non_lists in trace.values():
        if lists:
            for item in el.items:
                if isinstance(item, int) and not any(-n <= item < n for n in lists.values()):
                    parent, n = next(iter(lists.items()))
                    owner = f"'{parent}'" if parent else "the root module"
                    return Diagnostic(
                        f"index {item} is out of range: {owner} has {n} items", span=el.span,
                        hint=f"use 0..{n - 1}, or -{n}..-1 to count from the end")
        elif non_lists and not matched:
            return Diagnostic(
                f"'{render_selpath(path)}' indexes '{non_lists[0]}', which is not a list of modules",
                span=el.span, hint="`[...]` picks children of a ModuleList, e.g. `layers[0]`")
    return None


def explain_empty(sig: Any, path: ast.SelPath, part: Any, want: str) -> Diagnostic:
    """Explains why a selector path matched nothing of what was wanted.

    Args:
        sig: The model's signature.
        path: The selector path.
        part: What it matched: ``modules`` (after its class filter),
            ``params`` and ``unfiltered`` (modules before the class filter).
        want: ``"modules"``, ``"parameters"`` or ``"modules or parameters"``.

    Returns:
        A diagnostic: parameters where modules were wanted (or the reverse),
        a class filter that removed everything (with the classes seen), or
        nothing at all (the nearest real paths, and a did-you-mean for a
        segment name the model does not have).
    """
    text = render_selpath(path)
    modules, params, unfiltered = part.modules, part.params, part.unfiltered
    if want == "modules" and params:
        module, name = min(params)
        return Diagnostic(f"'{text}' names parameters (e.g. '{module}.{name}'), not modules",
                          span=path.span, hint=f"drop the parameter name: `{module}`" if module else None)
    if want == "parameters" and modules:
        base = render_selpath(path.model_copy(update={"classes": []}))
        return Diagnostic(f"'{text}' names modules, not parameters", span=path.span,
                          hint=f"name its parameters, e.g. `{base}.weight` or `{base}.**`")
    if unfiltered and path.classes:
        seen = Counter(sig.modules[p].cls for p in unfiltered)
        classes = {c for info in sig.modules.values() for c in info.bases}
        unknown = [c for c in path.classes if c not in classes]
        hint = did_you_mean(unknown[0], classes) if unknown else None
        return Diagnostic(
            f"'{text}' matches {len(unfiltered)} modules, none of class {' | '.join(path.classes)}",
            span=path.span, hint=hint or "`is` keeps modules whose class (or a base class) is named",
            notes=tuple(f"matched {n} x {c}" for c, n in seen.most_common(_NEAREST)))
    span, hint = path.span, None
    vocabulary = {p.rpartition(".")[2] for p in sig.modules} | {
        q.name for info in sig.modules.values() for q in info.params}
    for el in _name_patterns(path.elements):
        if not any(fnmatchcase(v, el.pattern) for v in vocabulary):
            span = el.span
            hint = (_head_hint(sig, el.pattern) or did_you_mean(el.pattern, vocabulary)
                    or f"no module or parameter is named '{el.pattern}'")
            break
    nearest = _nearest_paths(sig, path, want)
    return Diagnostic(f"'{text}' matches nothing in {sig.name}", span=span, hint=hint,
                      notes=tuple(f"nearest: {p}" for p in nearest))


def _head_hint(sig: Any, name: str) -> str | None:
    """How to build the model with the task head named ``name`` (None: not a head's name)."""
    if name not in _HEAD_MODULES:
        return None
    head = _HEAD_MODULES[name]
    if head == "causal-lm" and sig.config.get("is_encoder_decoder"):
        head = "seq2seq-lm"
    has_head = any(path.rpartition(".")[2] in _HEAD_MODULES for path in sig.modules)
    what = f"{sig.cls} has {'no' if not has_head else f'no {name!r}'} task head"
    if head is None:  # no --head builds a question-answering model
        return (f"{what}; '{name}' is a question-answering head: build the model with it in a "
                "pkg.module:factory (e.g. AutoModelForQuestionAnswering.from_config)")
    return f"{what}: build the model with --head {head} (Python: compile(..., head=\"{head}\"))"


def _name_patterns(elements: Iterable[Any]) -> Iterable[ast.NamePat]:
    """Every ``NamePat`` of a path, alternatives included, in written order."""
    for el in elements:
        if isinstance(el, ast.NamePat):
            yield el
        elif isinstance(el, ast.Alt):
            for option in el.options:
                yield from _name_patterns(option)


def _segments_for_compare(sig: Any, elements: Iterable[Any]) -> list[str]:
    """The selector as path segments to compare with real paths (indices as ``N``)."""
    segs: list[str] = []
    for el in elements:
        if isinstance(el, ast.NamePat):
            segs.append(el.pattern)
        elif isinstance(el, ast.Index):
            segs.append("N")
        elif isinstance(el, ast.Role):
            paths = sig.roles.get(el.name, ())
            segs.append(paths[0].rpartition(".")[2] if paths else el.name)
        elif isinstance(el, ast.Alt) and el.options:
            segs.extend(_segments_for_compare(sig, el.options[0]))
    return segs


_DIGITS = re.compile(r"(?<![^.])\d+(?![^.])")


def _nearest_paths(sig: Any, path: ast.SelPath, want: str) -> list[str]:
    """Real paths closest to the selector (difflib ratio on as many trailing segments).

    Paths that differ only in list indices are compared once (80 layers are
    one candidate), represented by the first of them in model order.
    """
    segs = _segments_for_compare(sig, path.elements)
    target = ".".join(segs)
    candidates: dict[str, str] = {}
    for mpath, info in sig.modules.items():
        if mpath and want != "parameters":
            candidates.setdefault(_DIGITS.sub("N", mpath), mpath)
        if want != "modules":
            for p in info.params:
                full = f"{mpath}.{p.name}" if mpath else p.name
                candidates.setdefault(_DIGITS.sub("N", full), full)
    scored = []
    for order, (general, real) in enumerate(candidates.items()):
        tail = general if path.anchored else ".".join(general.split(".")[-max(len(segs), 1):])
        scored.append((-difflib.SequenceMatcher(None, target, tail).ratio(), order, real))
    return [real for _, _, real in sorted(scored)[:_NEAREST]]
