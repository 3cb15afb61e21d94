"""Evaluating ``let`` arithmetic and checking property values against their types.

A property's value is an AST expression; its *type* (a :class:`PropType`)
turns it into the IR value or raises :class:`ValueProblem` saying, in words,
what was expected. The table :data:`PROPERTY_TYPES` is the schema of every
delta kind and of ``quantize`` blocks; its keys are
:data:`adaptlang.syntax.ast.KIND_PROPERTIES` (a test keeps the two equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from adaptlang.errors import Span, did_you_mean
from adaptlang.syntax import ast

__all__ = [
    "BROKEN", "PROPERTY_TYPES", "PropType", "SilentProblem", "ValueProblem", "evaluate", "format_number",
]


class ValueProblem(Exception):
    """A value that does not fit; carries the diagnostic's parts.

    Args:
        message: What is wrong.
        span: The offending expression.
        hint: How to fix it.
    """

    def __init__(self, message: str, span: Span | None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint


class SilentProblem(ValueProblem):
    """A value built on a constant already reported as broken: nothing new to say."""

    def __init__(self) -> None:
        super().__init__("depends on a broken constant", None)


class _Broken:
    """Stands for a constant whose definition failed (reported once, where it failed)."""

    def __repr__(self) -> str:
        return "BROKEN"


#: The value of a broken constant in a constants mapping.
BROKEN: Any = _Broken()


def format_number(value: float) -> str:
    """``8`` for 8.0, ``0.05`` for 0.05: numbers as a user would write them."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def evaluate(expr: Any, constants: Mapping[str, float]) -> int | float:
    """Evaluates numeric arithmetic over numbers and constants.

    Integers stay ``int`` under ``+ - *``; ``/`` always gives a float.

    Args:
        expr: An AST expression.
        constants: Resolved constants by name.

    Raises:
        ValueProblem: An unknown constant, division by zero, a string or a
            percentage inside arithmetic.
    """
    if isinstance(expr, ast.Number):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.name in constants:
            value = constants[expr.name]
            if value is BROKEN:
                raise SilentProblem()
            return value
        raise ValueProblem(f"unknown constant '{expr.name}'", expr.span,
                           did_you_mean(expr.name, constants) or "define it with `let NAME = VALUE`")
    if isinstance(expr, ast.Group):
        return evaluate(expr.inner, constants)
    if isinstance(expr, ast.Neg):
        return -evaluate(expr.operand, constants)
    if isinstance(expr, ast.BinOp):
        left, right = evaluate(expr.left, constants), evaluate(expr.right, constants)
        if expr.op == "+":
            result = left + right
        elif expr.op == "-":
            result = left - right
        elif expr.op == "*":
            result = left * right
        else:
            if right == 0:
                raise ValueProblem("division by zero", expr.right.span, f"{_show(expr.right)} is 0 here")
            result = left / right
        if isinstance(result, float) and not math.isfinite(result):
            raise ValueProblem("the result is too large", expr.span)
        return result
    if isinstance(expr, ast.Percent):
        raise ValueProblem("a percentage cannot be used in arithmetic", expr.span,
                           f"write the fraction instead: {format_number(expr.fraction)}")
    if isinstance(expr, ast.String):
        raise ValueProblem("expected a number, found a string", expr.span)
    if isinstance(expr, ast.Tagged):
        raise ValueProblem(f"expected a number, found `{expr.tag} ...`", expr.span)
    raise ValueProblem("expected a number", getattr(expr, "span", None))


def _show(expr: Any) -> str:
    """A short rendering of a simple expression, for hints."""
    if isinstance(expr, ast.Number):
        return expr.text
    if isinstance(expr, ast.Name):
        return expr.name
    return "this divisor"


# ---------------------------------------------------------------------------
# Property types.

Check = Callable[[Any, Mapping[str, float]], Any]


@dataclass(frozen=True)
class PropType:
    """How one property's value is read.

    Attributes:
        describe: What the value must be, for messages ("a positive whole number").
        check: Turns the AST value into the IR value or raises ValueProblem.
        selector: True for placement keys (the value is a Selector, kept as is).
    """

    describe: str
    check: Check
    selector: bool = False


def _number(value: Any, constants: Mapping[str, float], what: str, allow_percent: bool) -> float:
    if isinstance(value, ast.Percent):
        if not allow_percent:
            raise ValueProblem(f"expected {what}, found a percentage", value.span,
                               f"write {format_number(value.value)} without '%'")
        return value.fraction
    if isinstance(value, ast.Name) and value.name in ("true", "false"):
        raise ValueProblem(f"expected {what}, found '{value.name}'", value.span)
    return evaluate(value, constants)


def _int_check(minimum: int, what: str) -> Check:
    def check(value: Any, constants: Mapping[str, float]) -> int:
        number = _number(value, constants, what, allow_percent=False)
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueProblem(f"expected {what}, found {format_number(number)}", value.span,
                                   f"round it to a whole number, e.g. {max(round(number), minimum)}")
            number = int(number)
        if number < minimum:
            raise ValueProblem(f"expected {what}, found {number}", value.span)
        return number
    return check


def _float_check(what: str, low: float | None, high: float | None, low_open: bool, high_open: bool,
                 allow_percent: bool = False, percent_hint: bool = False) -> Check:
    def check(value: Any, constants: Mapping[str, float]) -> float:
        number = float(_number(value, constants, what, allow_percent))
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if too_low or too_high:
            hint = None
            if percent_hint and isinstance(value, ast.Number) and 1 < number <= 100:
                hint = f"for {format_number(number)} percent write {format_number(number)}%"
            raise ValueProblem(f"expected {what}, found {format_number(number)}", value.span, hint)
        return number
    return check


def _enum_check(*words: str) -> Check:
    def check(value: Any, constants: Mapping[str, float]) -> str:
        if isinstance(value, ast.Name) and value.name in words:
            return value.name
        shown = _describe(value)
        hint = did_you_mean(value.name, words) if isinstance(value, ast.Name) else None
        if isinstance(value, ast.String) and value.value in words:
            hint = f"write {value.value} without quotes"
        raise ValueProblem(f"expected {_one_of(words)}, found {shown}", value.span,
                           hint or f"one of: {', '.join(words)}")
    return check


def _bool_check(value: Any, constants: Mapping[str, float]) -> bool:
    return _enum_check("true", "false")(value, constants) == "true"


def _prompt_init(value: Any, constants: Mapping[str, float]) -> dict[str, Any]:
    if isinstance(value, ast.Tagged) and value.tag == "text" and isinstance(value.value, ast.String):
        if not value.value.value:
            raise ValueProblem("`init text` needs a non-empty string", value.value.span,
                               'for example `init text "Answer the question:"`')
        return {"kind": "text", "text": value.value.value}
    if isinstance(value, ast.Name) and value.name in ("vocab", "random"):
        return {"kind": value.name}
    if isinstance(value, ast.String):
        raise ValueProblem("a prompt's text init is written `init text \"...\"`", value.span,
                           f'write `init text "{value.value}"`')
    if isinstance(value, ast.Name) and value.name == "text":
        raise ValueProblem("`init text` needs a string", value.span,
                           'for example `init text "Answer the question:"`')
    hint = did_you_mean(value.name, ("text", "vocab", "random")) if isinstance(value, ast.Name) else None
    if isinstance(value, ast.Tagged):
        hint = did_you_mean(value.tag, ("text",)) or hint
    raise ValueProblem(f"expected `text \"...\"`, vocab or random, found {_describe(value)}",
                       value.span, hint)


def _selector(value: Any, constants: Mapping[str, float]) -> Any:
    return value


def _one_of(words: tuple[str, ...]) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _describe(value: Any) -> str:
    """How a value reads in a message."""
    if isinstance(value, ast.Name):
        return f"'{value.name}'"
    if isinstance(value, ast.String):
        return f'the string "{value.value}"'
    if isinstance(value, (ast.Number, ast.Percent)):
        return value.text
    if isinstance(value, ast.Tagged):
        return f"`{value.tag} ...`"
    return "an expression"


SELECTOR = PropType("a selector", _selector, selector=True)
POS_INT = PropType("a positive whole number", _int_check(1, "a positive whole number"))
NONNEG_INT = PropType("a whole number ≥ 0", _int_check(0, "a whole number >= 0"))
POS_NUMBER = PropType("a number > 0", _float_check("a number > 0", 0.0, None, True, False))
NUMBER = PropType("a number", _float_check("a number", None, None, False, False))
DROPOUT = PropType("a probability in [0, 1)",
                   _float_check("a probability in [0, 1)", 0.0, 1.0, False, True, allow_percent=True))
DENSITY = PropType("a fraction in (0, 1] or a percentage",
                   _float_check("a fraction in (0, 1] or a percentage such as 0.5%", 0.0, 1.0, True, False,
                                allow_percent=True, percent_hint=True))
BOOL = PropType("true or false", _bool_check)
PROMPT_INIT = PropType('text "...", vocab or random', _prompt_init)


def enum(*words: str) -> PropType:
    """A property taking one of ``words``."""
    return PropType(_one_of(words), _enum_check(*words))


#: The schema: kind -> key -> type, keys in documentation order.
PROPERTY_TYPES: dict[str, dict[str, PropType]] = {
    "lora": {"on": SELECTOR, "rank": POS_INT, "alpha": POS_NUMBER, "dropout": DROPOUT,
             "init": enum("kaiming", "gaussian", "zeros"), "variant": enum("lora", "dora", "rslora"),
             "bias": BOOL},
    "ia3": {"on": SELECTOR, "init": enum("ones"), "feedforward": BOOL},
    "adapter": {"after": SELECTOR, "before": SELECTOR, "parallel": SELECTOR, "size": POS_INT,
                "reduction": POS_NUMBER, "act": enum("relu", "gelu", "silu", "tanh"), "dropout": DROPOUT,
                "scale": NUMBER, "residual": BOOL},
    "prompt": {"tokens": POS_INT, "init": PROMPT_INIT},
    "tune": {"params": SELECTOR},
    "sparse": {"on": SELECTOR, "density": DENSITY, "select": enum("magnitude", "random"),
               "seed": NONNEG_INT},
    "quantize": {"on": SELECTOR, "block": POS_INT, "double": BOOL, "compute": enum("float32", "bfloat16")},
}
