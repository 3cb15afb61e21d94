"""Commands about models and the plan format: ``match``, ``inspect``, ``presets``, ``schema``.

``match`` and ``inspect`` help write specs: they load a model on the meta
device (no weights) and work on its signature. Torch is imported inside
those commands only.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from adaptlang.cli.head_args import HEAD_OPTION, NUM_LABELS_OPTION, Head, head_kwargs
from adaptlang.cli.selector_arg import parse_selector_arg, selector_error
from adaptlang.errors import AdaptError

__all__ = ["inspect_command", "match_command", "presets_command", "register", "schema_command"]


def load_signature(model: str, head: Optional[Head] = None, num_labels: Optional[int] = None) -> Any:
    """Returns the signature of ``model`` (built on the meta device; presets come from the cache)."""
    from adaptlang.plan.compiler import resolve_signature

    return resolve_signature(model, **head_kwargs(head, num_labels))


def find_targets(sig: Any, selector: Any) -> list[tuple[str, Optional[str]]]:
    """Returns what ``selector`` matches: ``(module path, None)`` or ``(module path, param)``.

    :func:`adaptlang.plan.select.match_targets` decides between modules and
    parameters (a last segment naming a parameter names parameters).
    """
    from adaptlang.plan import select

    modules, params = select.match_targets(sig, selector)
    return [(path, None) for path in modules] + [(path, param) for path, param in params]


def match_table(sig: Any, targets: list[tuple[str, Optional[str]]]) -> Table:
    """Tabulates matched modules (class, features, parameters) or parameters (shape, dtype)."""
    from adaptlang.cli.output import format_count, plain
    from adaptlang.cli.tree import numel, shape_text

    table = Table(title_justify="left", title_style="bold")
    table.add_column("path", no_wrap=True)
    table.add_column("class", style="cyan", no_wrap=True)
    table.add_column("in→out", justify="right", no_wrap=True)
    table.add_column("params")
    table.add_column("count", justify="right", no_wrap=True)
    for path, param in targets:
        info = sig.modules.get(path)
        if info is None:
            table.add_row(plain(path if param is None else f"{path}.{param}"), "?", "", "", "")
            continue
        feats = "" if info.in_features is None else f"{info.in_features}→{info.out_features}"
        params = [p for p in info.params if param is None or p.name == param]
        shapes = ", ".join(f"{p.name} {shape_text(p.shape)} {p.dtype}" for p in params)
        shown = path if param is None else (f"{path}.{param}" if path else param)
        table.add_row(plain(shown), plain(info.cls), feats, plain(shapes),
                      format_count(sum(numel(p.shape) for p in params)))
    return table


def match_command(
    selector: str = typer.Argument(..., help="A selector, e.g. 'layers[*].self_attn.{q_proj, v_proj}'.",
                                   show_default=False),
    model: str = typer.Option(..., "--model", "-m",
                              help="Model preset, directory, hub id (org/name) or pkg.module:factory."),
    head: Optional[Head] = HEAD_OPTION,
    num_labels: Optional[int] = NUM_LABELS_OPTION,
) -> None:
    """Show what a selector matches in a model: paths, classes, shapes, parameter counts."""
    from adaptlang.cli.output import plain, stdout_console

    parsed, offset = parse_selector_arg(selector)
    sig = load_signature(model, head, num_labels)
    try:
        targets = find_targets(sig, parsed)
    except AdaptError as exc:
        raise selector_error(exc, selector, offset) from None
    kind = "parameters" if any(param is not None for _, param in targets) else "modules"
    console = stdout_console()
    table = match_table(sig, targets)
    table.title = plain(f"{len(targets)} {kind} in {sig.name}")
    console.print(table)


def inspect_command(
    model: str = typer.Option(..., "--model", "-m",
                              help="Model preset, directory, hub id (org/name) or pkg.module:factory."),
    depth: Optional[int] = typer.Option(None, "--depth", "-d", min=0, help="Levels to show (default: all)."),
    roles: bool = typer.Option(False, "--roles", help="List the model's roles and the modules they name instead."),
    head: Optional[Head] = HEAD_OPTION,
    num_labels: Optional[int] = NUM_LABELS_OPTION,
) -> None:
    """Show a model's module tree with roles and shapes (repeated layers collapsed)."""
    from adaptlang.cli.output import stdout_console
    from adaptlang.cli.tree import build_tree, roles_table

    sig = load_signature(model, head, num_labels)
    console = stdout_console()
    console.print(roles_table(sig) if roles else build_tree(sig, depth))


def presets_command() -> None:
    """List the model presets that --model accepts by name."""
    from adaptlang.cli.output import stdout_console
    from adaptlang.plan.models import list_presets

    table = Table(title="model presets", title_justify="left", title_style="bold")
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("description")
    for name, description in preset_rows(list_presets()):
        table.add_row(Text(name), Text(description))
    stdout_console().print(table)


def preset_rows(presets: Any) -> list[tuple[str, str]]:
    """Turns ``list_presets()`` (names, a mapping, or objects) into (name, description) rows."""
    if isinstance(presets, dict):
        items = list(presets.items())
    else:
        items = [(p, None) if isinstance(p, str) else (getattr(p, "name", str(p)), p) for p in presets]
    rows = []
    for name, value in items:
        if value is None or isinstance(value, str):
            description = value or ""
        elif isinstance(value, dict):
            description = str(value.get("description", value.get("doc", "")))
        else:
            description = str(getattr(value, "description", "") or "")
        rows.append((str(name), description))
    return rows


def schema_command() -> None:
    """Print the JSON Schema of the plan JSON that `compile --format json` writes."""
    from adaptlang.cli.output import write_stdout
    from adaptlang.plan.schema import plan_json_schema

    write_stdout(json.dumps(plan_json_schema(), indent=2, sort_keys=True) + "\n")


def register(app: typer.Typer) -> None:
    """Adds ``match``, ``inspect``, ``presets`` and ``schema`` to ``app``."""
    app.command("match")(match_command)
    app.command("inspect")(inspect_command)
    app.command("presets")(presets_command)
    app.command("schema")(schema_command)

