"""``adaptc fmt``: rewrite specs in the canonical layout.

Files are rewritten atomically and only when their text changes. ``--check``
writes nothing and exits 1 listing the files that would change; ``--diff``
writes nothing and prints a unified diff. The formatter is
:func:`adaptlang.syntax.format.format_text`; it only changes layout, never
what a spec means (comments included). No model and no torch are involved.

Every file is processed even when some fail: all errors are reported, then
the exit code is the worst one (a spec error is 1, a missing file 2).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import List

import typer
from rich.text import Text

from adaptlang.errors import AdaptError, Diagnostic, UsageError, escape_controls

__all__ = ["diff_text", "fmt_command", "format_one", "register"]


def format_one(path: Path) -> tuple[str, str]:
    """Returns ``(old, new)`` text of one spec file.

    Raises:
        UsageError: When the file is missing or unreadable.
        SpecError: When it does not parse.
    """
    from adaptlang.syntax.format import format_text

    from adaptlang.limits import MAX_SPEC_FILE_BYTES
    from adaptlang.textfile import FileProblem, read_text_file

    try:  # the rules of every spec read: a regular file, within the limit, UTF-8 (line ends kept)
        old = read_text_file(path, MAX_SPEC_FILE_BYTES, what="a spec file (MAX_SPEC_FILE_BYTES)")
    except FileProblem as problem:
        raise UsageError(Diagnostic("no such file" if problem.missing else problem.message, obj=str(path),
                                    hint=problem.hint)) from None
    try:
        new = format_text(old, str(path))
    except AdaptError as exc:
        raise exc.with_source(old, str(path)) from None
    return old, new


def diff_text(path: Path, old: str, new: str) -> str:
    """Returns a unified diff from ``old`` to ``new`` labelled with ``path``."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{path} (original)", tofile=f"{path} (formatted)",
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def print_diff(diff: str) -> None:
    """Prints a unified diff with +/- colouring (the text itself unchanged)."""
    from adaptlang.cli.output import plain, stdout_console

    console = stdout_console()
    for line in diff.splitlines():
        style = None
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        console.print(plain(line, style=style or ""), soft_wrap=True)


def fmt_command(
    specs: List[Path] = typer.Argument(..., help="Spec files to format.", show_default=False),
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if any file would change."),
    diff: bool = typer.Option(False, "--diff", help="Write nothing; print what would change."),
) -> None:
    """Rewrite specs in place in the canonical layout (meaning and comments kept)."""
    from adaptlang.cli.output import error_console, plain, print_error, write_atomic, write_error

    changed: list[Path] = []
    failed = 0
    exit_code = 0
    err = error_console()
    for path in specs:
        try:
            old, new = format_one(path)
        except AdaptError as exc:
            print_error(exc)
            failed += 1
            exit_code = max(exit_code, exc.exit_code)
            continue
        if old == new:
            continue
        changed.append(path)
        if diff:
            print_diff(diff_text(path, old, new))
        if check:
            typer.echo(escape_controls(f"would reformat {path}"))
        elif not diff:
            try:
                write_atomic(path, new)
            except OSError as exc:  # a full or read-only disk: this file stays as it was; go on
                failure = write_error(path, exc)
                print_error(failure)
                failed += 1
                exit_code = max(exit_code, failure.exit_code)
                continue
            err.print(plain(f"reformatted {path}"))
    if check or diff:
        unchanged = len(specs) - len(changed) - failed
        verb = "would be reformatted" if check else "would change"
        err.print(Text(f"{len(changed)} {verb}, {unchanged} unchanged"
                       + (f", {failed} failed" if failed else "")))
        if check and changed:
            exit_code = max(exit_code, 1)
    if exit_code:
        raise typer.Exit(exit_code)


def register(app: typer.Typer) -> None:
    """Adds ``fmt`` to ``app``."""
    app.command("fmt")(fmt_command)
