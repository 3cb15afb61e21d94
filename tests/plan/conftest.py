"""Shared fixtures for planner tests: meta-model signatures and selector factories.

Signatures are built once per session per preset (a meta Llama-2-70B takes
tens of milliseconds, but hundreds of tests would add up). Selectors are
parsed with the real parser (``adaptlang.syntax.parser.parse_selector``); the
``sel_path`` factory builds AST nodes directly for forms the surface syntax
does not write alone (a leading ``[-1]``).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from adaptlang.errors import Span
from adaptlang.syntax import ast

#: Where hand-built selector nodes say they come from.
SPAN = Span("<test>", 1, 1, 1, 2)

_SIGNATURES: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Two shared cores: keep each test on one thread and seeded."""
    torch.set_num_threads(1)
    torch.manual_seed(0)


def preset_signature(name: str) -> Any:
    """Returns the (session-cached) signature of a preset built on meta."""
    if name not in _SIGNATURES:
        from adaptlang.plan.models import load_model
        from adaptlang.plan.signature import signature_of

        module, loaded = load_model(name, device="meta")
        _SIGNATURES[name] = signature_of(module, loaded)
    return _SIGNATURES[name]


@pytest.fixture
def sig() -> Callable[[str], Any]:
    """Factory: ``sig("llama")`` is the llama preset's signature."""
    return preset_signature


def parse(text: str) -> ast.Selector:
    """Parses a selector with the real parser (spans in ``<selector>``, line 1)."""
    from adaptlang.syntax.parser import parse_selector

    return parse_selector(text)


@pytest.fixture
def sel() -> Callable[[str], ast.Selector]:
    """Factory: ``sel("layers[*].mlp")`` is the parsed selector."""
    return parse


def build_selector(*elements: Any, anchored: bool = False, classes: tuple[str, ...] = (),
                   exclude: tuple[ast.SelPath, ...] = ()) -> ast.Selector:
    """Builds a one-path selector from AST elements (or shorthand strings).

    Strings are shorthand: ``"**"``, ``"*"``, ``"@role"``, else a name pattern.
    """
    path = ast.SelPath(span=SPAN, anchored=anchored, elements=[_element(e) for e in elements],
                       classes=list(classes))
    return ast.Selector(span=SPAN, include=[path], exclude=list(exclude))


def _element(item: Any) -> Any:
    if not isinstance(item, str):
        return item
    if item == "**":
        return ast.AnyMany(span=SPAN)
    if item == "*":
        return ast.AnyOne(span=SPAN)
    if item.startswith("@"):
        return ast.Role(span=SPAN, name=item[1:])
    return ast.NamePat(span=SPAN, pattern=item)


def index(*items: Any) -> ast.Index:
    """An index element: ints, ``"*"`` or ``(start, stop, step)`` tuples for slices."""
    built = [ast.Slice(span=SPAN, start=i[0], stop=i[1], step=i[2]) if isinstance(i, tuple) else i
             for i in items]
    return ast.Index(span=SPAN, items=built)


@pytest.fixture
def sel_path() -> Callable[..., ast.Selector]:
    """Factory: ``sel_path("layers", index(-1), "mlp")`` builds the AST directly."""
    return build_selector


@pytest.fixture
def idx() -> Callable[..., ast.Index]:
    """Factory: ``idx(-1)``, ``idx("*")``, ``idx((None, None, 2))`` build index elements."""
    return index
