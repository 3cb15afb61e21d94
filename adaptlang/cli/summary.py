"""The readable ``adaptc compile`` summary, built from ``Plan.to_dict()``.

Works on the plan's JSON contract (``docs/design.md``) only, so it needs no
torch and no model. Every piece of user text goes into rich ``Text`` or
plain table cells of a markup-free console, never into markup.
"""

from __future__ import annotations

from typing import Any, Mapping

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from adaptlang.cli.output import format_bytes, format_count, format_share

__all__ = ["delta_table", "header_text", "quantize_table", "summary_renderables", "task_table"]

SHORT_HASH = 12


def summary_renderables(plan: Mapping[str, Any]) -> list[RenderableType]:
    """Returns the header and tables that make up the compile summary.

    Args:
        plan: ``Plan.to_dict()``.

    Returns:
        Renderables in print order.
    """
    parts: list[RenderableType] = [header_text(plan), delta_table(plan)]
    quant = quantize_table(plan)
    if quant is not None:
        parts.append(quant)
    parts.append(task_table(plan))
    return parts


def header_text(plan: Mapping[str, Any]) -> Text:
    """Describes the model and the plan's identity in two lines."""
    model = plan.get("model", {})
    name = str(model.get("name", "?"))
    details = ", ".join(str(model[k]) for k in ("cls", "family", "dtype") if model.get(k))
    text = Text()
    text.append("model ", style="bold")
    text.append(name, style="bold cyan")
    if details:
        text.append(f" ({details})")
    text.append(f"  {format_count(model.get('params'))} params")
    text.append(f"  fingerprint {str(model.get('fingerprint', ''))[:SHORT_HASH]}", style="dim")
    text.append("\n")
    text.append("plan  ", style="bold")
    text.append(f"sha256 {str(plan.get('plan_sha256', ''))[:SHORT_HASH]}", style="dim")
    return text


def site_count(delta: Mapping[str, Any]) -> int:
    """Returns a delta's number of sites (``site_count``, else the sites listed)."""
    if "site_count" in delta:
        return int(delta["site_count"])
    return len(delta.get("sites", []))


def delta_params(delta: Mapping[str, Any]) -> int:
    """Returns a delta's parameter count (``params``, else the sum over its sites)."""
    if "params" in delta:
        return int(delta["params"])
    return sum(int(site.get("params", 0)) for site in delta.get("sites", []))


def delta_table(plan: Mapping[str, Any]) -> Table:
    """One row per delta: kind, sites, parameters and their share of the model."""
    total = plan.get("model", {}).get("params")
    table = Table(title="deltas", title_justify="left", title_style="bold")
    table.add_column("delta", style="cyan", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("sites", justify="right")
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("of model", justify="right")
    deltas = plan.get("deltas", {})
    for name, delta in deltas.items():
        params = delta_params(delta)
        table.add_row(name, str(delta.get("kind", "?")), str(site_count(delta)),
                      format_count(params), format_share(params, total))
    if not deltas:
        table.add_row(Text("(none)", style="dim"), "", "", "", "")
    return table


def term_text(term: Mapping[str, Any]) -> str:
    """Writes one task term back in task-expression style: ``0.5 * attn``, ``frozen(head)``."""
    name = str(term.get("name", "?"))
    weight = float(term.get("weight", 1.0))
    text = name if weight == 1.0 else f"{weight:g} * {name}"
    return f"frozen({text})" if term.get("frozen") else text


def task_table(plan: Mapping[str, Any]) -> Table:
    """One row per task: its deltas, trainable and bundle parameters, training memory."""
    total = plan.get("model", {}).get("params")
    table = Table(title="tasks", title_justify="left", title_style="bold")
    table.add_column("task", style="cyan", no_wrap=True)
    table.add_column("deltas")
    table.add_column("trainable", justify="right", no_wrap=True)
    table.add_column("bundle", justify="right", no_wrap=True)
    table.add_column("of model", justify="right")
    table.add_column("train memory", justify="right", no_wrap=True)
    for name, task in plan.get("tasks", {}).items():
        terms = " + ".join(term_text(t) for t in task.get("deltas", []))
        trainable = task.get("trainable_params")
        memory = task.get("memory", {}) or {}
        table.add_row(name, Text(terms), format_count(trainable), format_count(task.get("bundle_params")),
                      format_share(trainable, total), format_bytes(memory.get("total_bytes")))
    return table


def quantize_table(plan: Mapping[str, Any]) -> Table | None:
    """Summarises base transforms by format; None when the plan quantizes nothing."""
    sites = (plan.get("base", {}) or {}).get("quantize", []) or []
    if not sites:
        return None
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for site in sites:
        groups.setdefault(str(site.get("format", "?")), []).append(site)
    table = Table(title="base transforms", title_justify="left", title_style="bold")
    table.add_column("quantize", style="cyan", no_wrap=True)
    table.add_column("sites", justify="right")
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    for fmt, group in groups.items():
        before = sum(int(s.get("bytes_before", 0)) for s in group)
        after = sum(int(s.get("bytes_after", 0)) for s in group)
        table.add_row(fmt, str(len(group)), format_bytes(before), format_bytes(after))
    return table


def as_group(plan: Mapping[str, Any]) -> Group:
    """Returns the whole summary as one renderable (for embedding elsewhere)."""
    return Group(*summary_renderables(plan))
