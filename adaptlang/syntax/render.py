"""Printing AST fragments back as canonical ``.adapt`` text.

Every function here is the inverse of the parser on its fragment: parsing
the output gives an equal AST (spans aside). The formatter builds whole
files from these; diagnostics and the CLI use them to show selectors.
"""

from __future__ import annotations

from typing import Any

from adaptlang.syntax import ast

__all__ = ["render_expr", "render_selector", "render_string", "render_task", "render_value"]


def render_string(value: str) -> str:
    """A double-quoted literal whose parse is ``value``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def render_expr(expr: Any) -> str:
    """``2 * r``, ``-(a + 1)``, ``0.5%``: arithmetic with one space around operators.

    Parentheses are kept exactly where the source had them (``Group`` nodes);
    the parse tree already encodes precedence, so none need adding.
    """
    if isinstance(expr, (ast.Number, ast.Percent)):
        return expr.text
    if isinstance(expr, ast.String):
        return render_string(expr.value)
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.BinOp):
        # `1 + 1 + ... + 1` is a left-deep chain as long as the sum: walk its left spine in a
        # loop (only nesting, bounded by MAX_NESTING_DEPTH, may recurse).
        tail: list[str] = []
        while isinstance(expr, ast.BinOp):
            tail.append(f" {expr.op} {render_expr(expr.right)}")
            expr = expr.left
        return render_expr(expr) + "".join(reversed(tail))
    if isinstance(expr, ast.Neg):
        return f"-{render_expr(expr.operand)}"
    if isinstance(expr, ast.Group):
        return f"({render_expr(expr.inner)})"
    if isinstance(expr, ast.Tagged):
        return f"{expr.tag} {render_expr(expr.value)}"
    raise TypeError(f"not an expression: {type(expr).__name__}")


def render_value(value: Any) -> str:
    """A property's value: a selector or an expression."""
    if isinstance(value, ast.Selector):
        return render_selector(value)
    return render_expr(value)


def _render_index_item(item: Any) -> str:
    if isinstance(item, ast.Slice):
        start = "" if item.start is None else str(item.start)
        stop = "" if item.stop is None else str(item.stop)
        if item.step is None:
            return f"{start}:{stop}"
        return f"{start}:{stop}:{item.step}"
    return str(item)


def render_elements(elements: list[Any]) -> str:
    """Selector elements joined by dots; an index attaches to the element before it."""
    out = ""
    for i, el in enumerate(elements):
        if isinstance(el, ast.Index):
            out += "[" + ", ".join(_render_index_item(it) for it in el.items) + "]"
            continue
        if i > 0:
            out += "."
        if isinstance(el, ast.NamePat):
            out += el.pattern
        elif isinstance(el, ast.AnyOne):
            out += "*"
        elif isinstance(el, ast.AnyMany):
            out += "**"
        elif isinstance(el, ast.Role):
            out += f"@{el.name}"
        elif isinstance(el, ast.Alt):
            out += "{" + ", ".join(render_elements(opt) for opt in el.options) + "}"
        else:
            raise TypeError(f"not a selector element: {type(el).__name__}")
    return out


def render_path(path: ast.SelPath) -> str:
    """One selector path: ``/`` anchor, elements, ``is A | B`` filter."""
    text = ("/" if path.anchored else "") + render_elements(path.elements)
    if path.classes:
        text += " is " + " | ".join(path.classes)
    return text


def render_selector(selector: ast.Selector) -> str:
    """``a, b except c``: paths joined by ``, ``."""
    text = ", ".join(render_path(p) for p in selector.include)
    if selector.exclude:
        text += " except " + ", ".join(render_path(p) for p in selector.exclude)
    return text


def render_task(expr: Any) -> str:
    """``0.5 * sentiment + frozen(qa)``: a task expression, one space around operators."""
    if isinstance(expr, ast.TaskRef):
        return expr.name
    if isinstance(expr, ast.TaskSum):
        return " + ".join(render_task(t) for t in expr.terms)
    if isinstance(expr, ast.TaskScale):
        return f"{render_expr(expr.weight)} * {render_task(expr.operand)}"
    if isinstance(expr, ast.TaskFrozen):
        return f"frozen({render_task(expr.operand)})"
    if isinstance(expr, ast.TaskGroup):
        return f"({render_task(expr.inner)})"
    raise TypeError(f"not a task expression: {type(expr).__name__}")
