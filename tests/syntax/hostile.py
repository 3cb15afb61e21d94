"""Helpers for the hostile-input tests: run one input through every front-end entry point.

Each input goes through :func:`~adaptlang.spec.load_spec`, :func:`format_text`
and ``adaptc check`` / ``compile`` / ``fmt`` (in-process); a refused input
must be an ``AdaptError`` (exit 1) with the expected words, never an internal
error (exit 3), and an accepted one must load, format and check cleanly.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

from typer.testing import CliRunner

from adaptlang.cli.main import app
from adaptlang.errors import AdaptError, SpecError
from adaptlang.spec import load_spec
from adaptlang.syntax.format import format_text

HEADER = "adaptlang 1\n"


def cli(*args: Any):
    """Runs ``adaptc ARGS`` in-process; returns the click Result (exit code 3 = internal error)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def expect_refused(text: str, words: str, tmp_path: Path, where: tuple[int, int] | None = None,
                   commands: tuple[tuple[str, ...], ...] = (("check",), ("compile",), ("fmt", "--check")),
                   exit_code: int = 1) -> SpecError:
    """Asserts that every entry point refuses ``text`` with a SpecError saying ``words``.

    Args:
        where: The (line, column) the first diagnostic must point at, when given.
        commands: The ``adaptc`` commands to try on a file holding ``text``.
        exit_code: Their exit code: 1, or 2 where the file named on the command line is
            refused as a whole (too big), a usage error like a missing file.

    Returns:
        The error ``load_spec`` raised.
    """
    try:
        load_spec(text)
    except SpecError as exc:
        error = exc
    else:
        raise AssertionError("load_spec accepted the input")
    assert words in str(error), str(error)[:2000]
    diag = error.diagnostics[0]
    assert diag.span is not None or diag.obj is not None, diag
    if where is not None:
        assert (diag.span.line, diag.span.col) == where, diag.render()[:2000]
    try:
        format_text(text)
    except SpecError as exc:
        assert words in str(exc), str(exc)[:2000]
    else:
        raise AssertionError("format_text accepted the input")
    path = tmp_path / "hostile.adapt"
    path.write_text(text, encoding="utf-8")
    for command in commands:
        result = cli(*command, path)
        assert result.exit_code == exit_code, (command, result.exit_code, result.output[-2000:])
        assert words in result.output, (command, result.output[-2000:])
    return error


def expect_accepted(text: str, tmp_path: Path, compile_too: bool = False) -> Any:
    """Asserts that ``text`` loads, formats to a fixed point, and that ``adaptc check`` accepts it."""
    spec = load_spec(text)
    once = format_text(text)
    assert format_text(once) == once
    path = tmp_path / "ok.adapt"
    path.write_text(text, encoding="utf-8")
    commands = [("check",), ("fmt", "--check")]
    if compile_too:
        commands.append(("compile",))
    for command in commands:
        result = cli(*command, path)
        assert result.exit_code in ((0, 1) if command[0] == "fmt" else (0,)), (command, result.output[-2000:])
        assert "internal error" not in result.output, result.output[-2000:]
    return spec


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Runs ``fn``; returns (its result or the AdaptError it raised, seconds, peak traced MB)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result: Any = fn()
    except AdaptError as exc:
        result = exc
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return result, seconds, peak
