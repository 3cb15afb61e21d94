"""The syntax layer: grammar, parser, AST and formatter of ``.adapt`` files.

Public entry points (imported lazily, so that ``adaptlang.syntax.ast`` loads
without building the parser)::

    parse_text(text, file="<string>") -> ast.Module
    parse_file(path) -> ast.Module
    parse_selector(text, file="<selector>") -> ast.Selector
    format_text(text, file="<string>") -> str
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_text", "parse_file", "parse_selector", "parse_text"]

_HOMES = {"parse_text": "parser", "parse_file": "parser", "parse_selector": "parser", "format_text": "format"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f"adaptlang.syntax.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'adaptlang.syntax' has no attribute {name!r}")
