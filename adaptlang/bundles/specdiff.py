"""Semantic diffs of specs (and of their plans), for ``adaptc diff``.

Two specs differ semantically when their :meth:`~adaptlang.spec.model.Spec.canonical`
values differ: layout, comments, statement order and how a value was
written (``alpha 2 * r`` or ``alpha 16``) do not count. The diff lists deltas
and tasks added, removed or changed (property by property, overrides
included), the default model and the base transforms. Given a model, both
specs are compiled and the plans compared too: sites gained and lost per
delta, and parameter counts before and after per delta and per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Change", "SpecDiff", "diff_plans", "diff_specs", "render_diff"]


@dataclass
class Change:
    """One semantic change.

    Attributes:
        what: ``delta``, ``task``, ``model``, ``quantize`` or ``plan``.
        name: The delta's or task's name ('' for the model and base transforms).
        status: ``added``, ``removed`` or ``changed``.
        details: Readable lines (``rank: 8 -> 16``, ``+ model.layers.3.mlp``).
    """

    what: str
    name: str
    status: str
    details: list[str] = field(default_factory=list)


@dataclass
class SpecDiff:
    """The result of comparing two specs (and, with a model, their plans).

    Attributes:
        spec: Changes in what the specs say.
        plan: Changes in the compiled plans (empty without a model).
    """

    spec: list[Change] = field(default_factory=list)
    plan: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything differs."""
        return bool(self.spec or self.plan)


def _show(value: Any) -> str:
    """A property value as spec text."""
    from adaptlang.syntax import ast
    from adaptlang.syntax.render import render_selector, render_string

    if isinstance(value, ast.Selector):
        return render_selector(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if hasattr(value, "kind") and hasattr(value, "text"):  # PromptInit
        return f"text {render_string(value.text)}" if value.kind == "text" else value.kind
    return str(value)


def _fields(item: Any) -> dict[str, str]:
    """A delta's or base transform's properties (overrides as ``KEY for SELECTOR``), as text."""
    from adaptlang.syntax.render import render_selector

    skip = {"name", "overrides", "span", "source_file", "kind"}
    out = {key: _show(getattr(item, key)) for key in type(item).model_fields if key not in skip}
    out = {k: v for k, v in out.items() if v != "None"}
    for ov in item.overrides:
        out[f"{ov.key} for {render_selector(ov.selector)}"] = _show(ov.value)
    return out


def _property(key: str, value: str) -> str:
    """``key value``, or ``key value for SELECTOR`` for an override (keyed ``key for SELECTOR``)."""
    name, sep, selector = key.partition(" for ")
    return f"{name} {value} for {selector}" if sep else f"{key} {value}"


def _compare_fields(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Lines for properties changed, added and removed."""
    lines = [f"{k}: {old[k]} -> {new[k]}" for k in old if k in new and old[k] != new[k]]
    lines += [f"+ {_property(k, new[k])}" for k in new if k not in old]
    lines += [f"- {_property(k, old[k])}" for k in old if k not in new]
    return lines


def _terms(task: Any) -> str:
    """A flattened task as task-expression text."""
    parts = []
    for t in task.terms:
        text = t.delta if t.weight == 1.0 else f"{t.weight:g} * {t.delta}"
        parts.append(f"frozen({text})" if t.frozen else text)
    return " + ".join(parts)


def _diff_named(what: str, old: dict[str, Any], new: dict[str, Any], describe: Any, compare: Any) -> list[Change]:
    """Added, removed and changed entries of two name-keyed collections, sorted by name."""
    changes = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append(Change(what, name, "added", [describe(new[name])]))
        elif name not in new:
            changes.append(Change(what, name, "removed", [describe(old[name])]))
        else:
            lines = compare(old[name], new[name])
            if lines:
                changes.append(Change(what, name, "changed", lines))
    return changes


def diff_specs(old: Any, new: Any) -> list[Change]:
    """Compares two checked specs by meaning (module docstring).

    Returns:
        Changes sorted by kind and name; empty when the canonical forms are equal.
    """
    if old.canonical() == new.canonical():
        return []
    changes = []
    if old.model != new.model:
        changes.append(Change("model", "", "changed", [f"{old.model} -> {new.model}"]))

    def compare_delta(a: Any, b: Any) -> list[str]:
        if a.kind != b.kind:
            return [f"kind: {a.kind} -> {b.kind}"]
        return _compare_fields(_fields(a), _fields(b))

    changes += _diff_named("delta", old.deltas, new.deltas,
                           lambda d: f"{d.kind}: " + ", ".join(_property(k, v) for k, v in _fields(d).items()),
                           compare_delta)
    changes += _diff_named("task", old.tasks, new.tasks, _terms,
                           lambda a, b: [f"{_terms(a)} -> {_terms(b)}"] if _terms(a) != _terms(b) else [])
    old_q = [f"{q.format}: " + ", ".join(_property(k, v) for k, v in _fields(q).items() if k != "format")
             for q in old.quantize]
    new_q = [f"{q.format}: " + ", ".join(_property(k, v) for k, v in _fields(q).items() if k != "format")
             for q in new.quantize]
    if old_q != new_q:
        changes.append(Change("quantize", "", "changed", [f"- {q}" for q in old_q if q not in new_q]
                              + [f"+ {q}" for q in new_q if q not in old_q]))
    if not changes:  # e.g. only an implicit task's flag: still say something
        changes.append(Change("spec", "", "changed", ["the specs differ in a way not listed above"]))
    return changes


def _site_keys(delta: dict[str, Any]) -> list[str]:
    return [f"{s['path']}.{s['param']}" if "param" in s else s["path"] for s in delta["sites"]]


def diff_plans(old: Any, new: Any, limit: int = 8) -> list[Change]:
    """Compares two plans: sites gained and lost, parameter counts before and after.

    Args:
        old, new: :class:`~adaptlang.plan.plan.Plan` objects (compiled against the same model).
        limit: Site paths listed per delta and direction (then a count).
    """
    if old.sha256 == new.sha256:
        return []
    a, b = old.to_dict(), new.to_dict()

    def compare_delta(x: dict[str, Any], y: dict[str, Any]) -> list[str]:
        lines = []
        if (x["params"], x["site_count"]) != (y["params"], y["site_count"]):
            lines.append(f"{x['site_count']} -> {y['site_count']} sites, {x['params']:,} -> {y['params']:,} parameters")
        gained = [s for s in _site_keys(y) if s not in set(_site_keys(x))]
        lost = [s for s in _site_keys(x) if s not in set(_site_keys(y))]
        for sign, paths in (("+", gained), ("-", lost)):
            lines += [f"{sign} {p}" for p in paths[:limit]]
            if len(paths) > limit:
                lines.append(f"{sign} ... and {len(paths) - limit} more")
        same = {s["path"] + s.get("param", ""): s for s in x["sites"]}
        if not lines and x != y:
            changed = [s["path"] for s in y["sites"] if same.get(s["path"] + s.get("param", "")) != s]
            lines.append(f"settings changed at {len(changed)} sites" + (f" (first: {changed[0]})" if changed else ""))
        return lines

    def compare_task(x: dict[str, Any], y: dict[str, Any]) -> list[str]:
        if (x["trainable_params"], x["bundle_params"]) == (y["trainable_params"], y["bundle_params"]):
            return []
        return [f"trainable {x['trainable_params']:,} -> {y['trainable_params']:,}, "
                f"bundle {x['bundle_params']:,} -> {y['bundle_params']:,}"]

    changes = [Change("plan", "", "changed", [f"sha256 {old.sha256[:16]} -> {new.sha256[:16]}"])]
    changes += _diff_named("delta", a["deltas"], b["deltas"],
                           lambda d: f"{d['kind']}: {d['site_count']} sites, {d['params']:,} parameters", compare_delta)
    changes += _diff_named("task", a["tasks"], b["tasks"],
                           lambda t: f"trainable {t['trainable_params']:,}, bundle {t['bundle_params']:,}",
                           compare_task)
    return changes


def render_diff(diff: SpecDiff, old_label: str, new_label: str, model: str | None = None) -> str:
    """Writes a diff as plain text (``---``/``+++`` header, one block per change)."""
    lines = [f"--- {old_label}", f"+++ {new_label}"]
    if not diff.changed:
        return "\n".join(lines + ["no semantic changes"]) + "\n"
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for title, changes in (("spec", diff.spec), (f"plan on {model}", diff.plan)):
        if not changes:
            continue
        lines.append(f"{title}:")
        for c in changes:
            head = f"  {marks[c.status]} {c.what}" + (f" {c.name}" if c.name else "") + f" {c.status}"
            if len(c.details) == 1 and c.status != "changed":
                lines.append(f"{head}: {c.details[0]}")
                continue
            lines.append(head)
            lines += [f"      {d}" for d in c.details]
    return "\n".join(lines) + "\n"
