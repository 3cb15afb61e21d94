"""Parsing a selector given on the command line (``adaptc match SELECTOR``).

The selector is parsed with :func:`adaptlang.syntax.parser.parse_selector`;
error spans are mapped onto the selector text (:func:`remap`, which also
shifts spans of a selector embedded after a prefix), so diagnostics read
``<selector>:1:COL`` with the caret under the user's own text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from adaptlang.errors import AdaptError, Diagnostic, Span, UsageError

__all__ = ["SELECTOR_FILE", "parse_selector_arg", "selector_error"]

#: The file name that selector diagnostics show.
SELECTOR_FILE = "<selector>"

_WRAPPED_LINE = 2


def parse_selector_arg(text: str) -> tuple[Any, int]:
    """Parses a selector typed on the command line.

    Args:
        text: The selector, e.g. ``layers[*].self_attn.{q_proj, v_proj}``.

    Returns:
        ``(selector, offset)``: the parsed :class:`~adaptlang.syntax.ast.Selector`
        and how many columns its spans are shifted right of ``text`` (0).

    Raises:
        UsageError: For an empty or multi-line selector.
        SpecError: When it does not parse (spans mapped onto ``text``).
    """
    if not text.strip() or "\n" in text or "\r" in text:
        raise UsageError(Diagnostic("a selector is one non-empty line", obj="SELECTOR",
                                    hint="for example: 'layers[*].self_attn.q_proj'"))
    from adaptlang.syntax.parser import parse_selector

    try:
        return parse_selector(text, file=SELECTOR_FILE), 0
    except AdaptError as exc:
        raise selector_error(exc, text, 0) from None


def selector_error(exc: AdaptError, text: str, offset: int) -> AdaptError:
    """Returns ``exc`` with spans in the selector moved onto ``text`` (line 1).

    Args:
        exc: An error from parsing or matching the selector.
        text: The selector as the user typed it.
        offset: Columns to subtract (the wrapper's prefix length, or 0).

    Returns:
        An error of the same type whose diagnostics point into ``text``.
    """
    return type(exc)([remap(d, text, offset) for d in exc.diagnostics])


def remap(diag: Diagnostic, text: str, offset: int) -> Diagnostic:
    """Moves one diagnostic's span from the wrapper (or direct parse) onto ``text``."""
    span = diag.span
    if span is None or span.file != SELECTOR_FILE:
        return diag
    line = _WRAPPED_LINE if offset else 1
    if span.line != line:
        # A span on the wrapper's header or a multi-line span: point at the whole selector.
        new = Span(SELECTOR_FILE, 1, 1, 1, len(text) + 1)
    else:
        start = min(max(span.col - offset, 1), len(text) + 1)
        end_col = span.end_col - offset if span.end_line == span.line else len(text) + 1
        end = min(max(end_col, start + 1), len(text) + 1)
        new = Span(SELECTOR_FILE, 1, start, 1, max(end, start))
    return replace(diag, span=new, source_line=text)
