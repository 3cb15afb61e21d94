"""``adaptc compile`` and ``adaptc check``.

``compile`` binds a spec to a model and shows the plan: a readable summary
(default), the plan JSON exactly as :meth:`Plan.to_json` writes it, or a DOT
graph. ``check`` parses and checks a spec without a model (torch is never
imported then), and binds it too when ``--model`` is given.

``compile --out DIR`` is a hook for the bundles extension: a handler set with
:func:`set_out_handler` (from ``adaptlang.cli.bundle_cmds.register``) receives
a :class:`CompileOutput` after the plan is built.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from adaptlang.cli.head_args import ALLOW_FACTORY_OPTION, HEAD_OPTION, NUM_LABELS_OPTION, Head, head_kwargs
from adaptlang.errors import Diagnostic, UsageError

__all__ = [
    "CompileOutput",
    "OutputFormat",
    "check_command",
    "compile_command",
    "parse_overrides",
    "register",
    "require_file",
    "set_out_handler",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"[+-]?\d+\Z")


class OutputFormat(str, Enum):
    """What ``adaptc compile`` prints."""

    table = "table"
    json = "json"
    dot = "dot"


@dataclass
class CompileOutput:
    """What a ``compile --out DIR`` handler receives.

    Attributes:
        plan: The compiled :class:`~adaptlang.plan.plan.Plan`.
        spec_path: The spec file as the user named it.
        model: The ``--model`` value, or None when the spec's default was used.
        overrides: The ``--set`` constants.
        out_dir: The ``--out`` folder (not created yet).
        head: The ``--head`` value (``"sequence-classification"``), or None.
        num_labels: The ``--num-labels`` value, or None.
        allow_factory: ``--allow-factory``: the spec's own model may be a factory.
    """

    plan: Any
    spec_path: Path
    model: Optional[str]
    overrides: dict[str, float] = field(default_factory=dict)
    out_dir: Path = Path(".")
    head: Optional[str] = None
    num_labels: Optional[int] = None
    allow_factory: bool = False


OutHandler = Callable[[CompileOutput], None]
_out_handler: Optional[OutHandler] = None


def set_out_handler(handler: Optional[OutHandler]) -> None:
    """Installs (or, with None, removes) the handler behind ``compile --out DIR``.

    Args:
        handler: Called once per ``compile --out`` run, after the plan is built.
    """
    global _out_handler
    _out_handler = handler


def require_file(path: Path) -> Path:
    """Returns ``path`` if it is a readable file; raises a usage error otherwise."""
    if not path.exists():
        raise UsageError(Diagnostic("no such file", obj=str(path), hint="check the spec path"))
    if not path.is_file():
        raise UsageError(Diagnostic("not a regular file", obj=str(path)))
    return path


def parse_overrides(items: Optional[List[str]]) -> dict[str, float]:
    """Parses ``--set NAME=VALUE`` items into ``let`` overrides.

    Args:
        items: The raw option values, in command-line order (a later one wins).

    Returns:
        Name to number; integers stay ``int``.

    Raises:
        UsageError: For an item that is not ``NAME=NUMBER``.
    """
    overrides: dict[str, float] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not _NAME.match(name):
            raise UsageError(
                Diagnostic(f"invalid --set {item!r}: expected NAME=VALUE", obj="--set",
                           hint="for example: --set r=16")
            )
        overrides[name] = parse_number(raw, item)
    return overrides


def parse_number(raw: str, item: str) -> float:
    """Parses the value of a ``--set`` item as an int or a finite float.

    Raises:
        UsageError: Not a number, not finite (``inf``, ``nan``, ``1e400``), an
            integer past the float range (every constant may feed a float),
            or longer than :data:`~adaptlang.limits.SET_VALUE_MAX_CHARS`.
    """
    from adaptlang.limits import SET_VALUE_MAX_CHARS

    hint = "let constants are numbers, e.g. --set r=16 or --set p=0.05"
    if len(raw) > SET_VALUE_MAX_CHARS:
        # Checked first: int() of a 5,000-digit string raises, and a 300-digit one is no setting.
        raise UsageError(Diagnostic(
            f"invalid --set {item[:40]!r}...: the value has {len(raw):,} characters, over the limit of "
            f"{SET_VALUE_MAX_CHARS} (SET_VALUE_MAX_CHARS)", obj="--set", hint=hint))
    if _INT.match(raw):
        number = int(raw)
        if abs(number) <= sys.float_info.max:
            return number
        value = math.inf
    else:
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(Diagnostic(f"invalid --set {item!r}: {raw!r} is not a number", obj="--set",
                                        hint=hint)) from None
    if not math.isfinite(value):
        raise UsageError(Diagnostic(f"invalid --set {item!r}: {raw!r} is not a finite number", obj="--set",
                                    hint=hint))
    return value


def build_plan(spec: Path, model: Optional[str], overrides: dict[str, float], allow_factory: bool = False,
               **head: Any) -> Any:
    """Compiles ``spec`` against ``model`` (torch is imported here, not before).

    ``head`` holds ``head``/``num_labels`` for ``compile_plan`` (see :func:`head_kwargs`).
    ``model`` (``--model``) is the user's own; the spec's ``model`` statement
    may name a factory only with ``allow_factory`` (``--allow-factory``).

    Raises:
        FactoryRefusedError: The spec names a factory without ``--allow-factory``.
    """
    from adaptlang.plan.compiler import compile_plan

    kwargs: dict[str, Any] = dict(head)
    if overrides:
        kwargs["overrides"] = overrides
    if allow_factory:
        kwargs["allow_factory"] = True
    return compile_plan(spec, model, **kwargs)


def compile_command(
    spec: Path = typer.Argument(..., help="The .adapt spec to compile.", show_default=False),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Model preset, Hugging Face directory, hub id (org/name) or pkg.module:factory; "
             "overrides the spec's model.",
    ),
    fmt: OutputFormat = typer.Option(
        OutputFormat.table, "--format", "-f", help="table: summary; json: the plan; dot: a graph.",
    ),
    output: Optional[str] = typer.Option(
        None, "--output", "-o", help="Write to this file instead of stdout (- is stdout).",
    ),
    sets: Optional[List[str]] = typer.Option(
        None, "--set", "-s", metavar="NAME=VALUE", help="Override a let constant (repeatable).",
    ),
    out_dir: Optional[str] = typer.Option(
        None, "--out", help="Write one bundle per task into this folder (bundles extension).",
    ),
    head: Optional[Head] = HEAD_OPTION,
    num_labels: Optional[int] = NUM_LABELS_OPTION,
    allow_factory: bool = ALLOW_FACTORY_OPTION,
) -> None:
    """Bind a spec to a model and show the plan: deltas, tasks, parameters, memory."""
    from adaptlang.cli.output import output_file, output_folder, write_output

    overrides = parse_overrides(sets)
    require_file(spec)
    if out_dir is not None and _out_handler is None:
        raise UsageError(Diagnostic(
            "--out needs the bundles extension (adaptlang.cli.bundle_cmds), which is not installed",
            obj="--out"))
    # Output paths are checked before compiling: a bad one is a usage error, not a lost run.
    target = output_file(output, "--output") if output is not None else None
    if out_dir is not None:
        out_dir = output_folder(out_dir, "--out")
    heads = head_kwargs(head, num_labels)
    plan = build_plan(spec, model, overrides, allow_factory, **heads)
    if fmt is OutputFormat.table:
        text = plan.summary()
    elif fmt is OutputFormat.json:
        text = plan.to_json()
    else:
        text = plan.to_dot()
        text = text if text.endswith("\n") else text + "\n"
    write_output(target, text or "", json=fmt is OutputFormat.json)
    if out_dir is not None and _out_handler is not None:
        _out_handler(CompileOutput(plan=plan, spec_path=spec, model=model, overrides=overrides,
                                   out_dir=out_dir, allow_factory=allow_factory, **heads))


def check_command(
    spec: Path = typer.Argument(..., help="The .adapt spec to check.", show_default=False),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Also bind the spec to this model (selectors, roles, shapes).",
    ),
    head: Optional[Head] = HEAD_OPTION,
    num_labels: Optional[int] = NUM_LABELS_OPTION,
    allow_factory: bool = ALLOW_FACTORY_OPTION,
) -> None:
    """Parse and check a spec; with --model (or --head), bind it to the model too."""
    require_file(spec)
    heads = head_kwargs(head, num_labels)
    if model is None and not heads:
        from adaptlang.spec import load_spec

        loaded = load_spec(spec)
        typer.echo(f"ok: {plural(len(loaded.deltas), 'delta')}, {plural(len(loaded.tasks), 'task')}")
        return
    data = build_plan(spec, model, {}, allow_factory, **heads).to_dict()
    info = data.get("model", {})
    from adaptlang.errors import escape_controls

    typer.echo(escape_controls(
        f"ok: {plural(len(data.get('deltas', {})), 'delta')}, "
        f"{plural(len(data.get('tasks', {})), 'task')}; "
        f"bound to {info.get('name', model)} ({info.get('cls', '?')})"
    ))


def plural(n: int, word: str) -> str:
    """Returns ``"1 delta"`` / ``"3 deltas"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def register(app: typer.Typer) -> None:
    """Adds ``compile`` and ``check`` to ``app``."""
    app.command("compile")(compile_command)
    app.command("check")(check_command)
