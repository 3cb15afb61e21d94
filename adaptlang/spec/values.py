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
from adaptlang.limits import (
    MAX_SCALE_PROPERTY, MAX_SEED, MAX_SPEC_NUMBER, MAX_WIDTH_PROPERTY, MIN_REDUCTION)
from adaptlang.syntax import ast

__all__ = [
    "BROKEN", "PROPERTY_TYPES", "PropType", "SilentProblem", "ValueProblem", "check_magnitude", "evaluate",
    "format_number", "show_chain",
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
    """``8`` for 8.0, ``0.05`` for 0.05: numbers as a user would write them.

    Huge integers (a literal of hundreds of digits) are shortened, never
    converted to float (that overflows).
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 16:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def show_chain(names: list[str]) -> str:
    """``a -> b -> a``; a chain of thousands shows its ends and its length."""
    if len(names) <= 12:
        return " -> ".join(names)
    return " -> ".join([*names[:6], "...", *names[-3:]]) + f" ({len(names) - 1} steps)"


def check_magnitude(value: int | float, span: Span | None, what: str = "this value") -> int | float:
    """Returns ``value`` if it is finite and within :data:`~adaptlang.limits.MAX_SPEC_NUMBER`.

    Bounding every operand and result keeps ``let`` arithmetic exact and
    cheap: without it, 40 lines of ``let b = a * a`` square a Python integer
    40 times (a number of 2**40 bits), and a big integer divided or scaled
    into a float overflows.

    Raises:
        ValueProblem: A non-finite value, or one past the limit.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueProblem(f"{what} is not a finite number ({value})", span,
                           f"numbers in a spec lie within ±{format_number(MAX_SPEC_NUMBER)}")
    if abs(value) > MAX_SPEC_NUMBER:
        raise ValueProblem(f"{what} is too large: {format_number(value)} is past the limit of "
                           f"±{format_number(MAX_SPEC_NUMBER)} (MAX_SPEC_NUMBER)", span,
                           "numbers in a spec are ranks, widths, scales and weights: far smaller than this")
    return value


def evaluate(expr: Any, constants: Mapping[str, float]) -> int | float:
    """Evaluates numeric arithmetic over numbers and constants.

    Integers stay ``int`` under ``+ - *``; ``/`` always gives a float. The
    walk is iterative (a flat sum of thousands of terms is a left-deep tree
    as deep as it is long), and every operand and result of an operator is
    bounded by :func:`check_magnitude`, so evaluation is linear in the
    expression's size. A lone literal is returned as written: the property
    or ``let`` it belongs to checks its range and names it.

    Args:
        expr: An AST expression.
        constants: Resolved constants by name.

    Raises:
        ValueProblem: An unknown constant, division by zero, a string or a
            percentage inside arithmetic, an operand or result past
            ``MAX_SPEC_NUMBER`` or not finite.
    """
    values: list[int | float] = []
    # Work items: ("eval", node) pushes a node's value; ("apply", node) combines its operands' values.
    work: list[tuple[str, Any]] = [("eval", expr)]
    while work:
        action, node = work.pop()
        if action == "apply":
            if isinstance(node, ast.Neg):
                values.append(-values.pop())
                continue
            right, left = values.pop(), values.pop()
            values.append(_apply(node, left, right))
            continue
        if isinstance(node, ast.Group):
            work.append(("eval", node.inner))
        elif isinstance(node, ast.Neg):
            work.append(("apply", node))
            work.append(("eval", node.operand))
        elif isinstance(node, ast.BinOp):
            work.append(("apply", node))
            work.append(("eval", node.right))
            work.append(("eval", node.left))
        else:
            values.append(_leaf(node, constants))
    return values[0]


def _leaf(expr: Any, constants: Mapping[str, float]) -> int | float:
    """The value of a number or a constant; anything else in arithmetic is an error."""
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
    if isinstance(expr, ast.Percent):
        raise ValueProblem("a percentage cannot be used in arithmetic", expr.span,
                           f"write the fraction instead: {format_number(expr.fraction)}")
    if isinstance(expr, ast.String):
        raise ValueProblem("expected a number, found a string", expr.span)
    if isinstance(expr, ast.Tagged):
        raise ValueProblem(f"expected a number, found `{expr.tag} ...`", expr.span)
    raise ValueProblem("expected a number", getattr(expr, "span", None))


def _apply(expr: ast.BinOp, left: int | float, right: int | float) -> int | float:
    """One operator, with both operands and the result bounded."""
    check_magnitude(left, expr.left.span, "the left operand")
    check_magnitude(right, expr.right.span, "the right operand")
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
    return check_magnitude(result, expr.span, "the result")


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


def _int_check(minimum: int, maximum: int, what: str) -> Check:
    """A whole number in ``[minimum, maximum]``; past the maximum, the message names the limit."""
    too_big = f"{what} up to {maximum:,}"

    def check(value: Any, constants: Mapping[str, float]) -> int:
        number = _number(value, constants, what, allow_percent=False)
        if isinstance(number, float):
            if not math.isfinite(number) or abs(number) > maximum:
                # Checked before int(): int(inf) raises and int(1e308) is a 309-digit integer.
                raise ValueProblem(f"expected {too_big}, found {format_number(number)}", value.span)
            if not number.is_integer():
                raise ValueProblem(f"expected {what}, found {format_number(number)}", value.span,
                                   f"round it to a whole number, e.g. {max(round(number), minimum)}")
            number = int(number)
        if number > maximum:
            raise ValueProblem(f"expected {too_big}, found {format_number(number)}", value.span)
        if number < minimum:
            raise ValueProblem(f"expected {what}, found {format_number(number)}", value.span)
        return number
    return check


def _float_check(what: str, low: float | None, high: float | None, low_open: bool, high_open: bool,
                 allow_percent: bool = False, percent_hint: bool = False, limit: str | None = None) -> Check:
    """A finite number in a range; ``limit`` replaces ``what`` in the message when past a bound."""
    def check(value: Any, constants: Mapping[str, float]) -> float:
        raw = _number(value, constants, what, allow_percent)
        try:
            number = float(raw)
        except OverflowError:  # an integer literal of hundreds of digits
            number = math.inf if raw > 0 else -math.inf
        # NaN fails every comparison, so finiteness is checked on its own.
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if not math.isfinite(number) or too_low or too_high:
            hint = None
            if percent_hint and isinstance(value, ast.Number) and 1 < number <= 100:
                hint = f"for {format_number(number)} percent write {format_number(number)}%"
            shown = format_number(number) if math.isfinite(number) else format_number(raw)
            past = not math.isfinite(number) or too_high or (too_low and low is not None and low < 0)
            raise ValueProblem(f"expected {limit if (limit and past) else what}, found {shown}", value.span, hint)
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
_SCALE = f"{MAX_SCALE_PROPERTY:,.0f}"
_LOW = format_number(MIN_REDUCTION)
POS_INT = PropType("a positive whole number", _int_check(1, MAX_WIDTH_PROPERTY, "a positive whole number"))
SEED = PropType("a whole number ≥ 0", _int_check(0, MAX_SEED, "a whole number >= 0"))
POS_NUMBER = PropType("a number > 0", _float_check("a number > 0", 0.0, MAX_SCALE_PROPERTY, True, False,
                                                   limit=f"a number > 0 up to {_SCALE}"))
REDUCTION = PropType(f"a number from {_LOW} to {_SCALE}",
                     _float_check(f"a number from {_LOW} to {_SCALE}", MIN_REDUCTION, MAX_SCALE_PROPERTY,
                                  False, False))
NUMBER = PropType("a number", _float_check("a number", -MAX_SCALE_PROPERTY, MAX_SCALE_PROPERTY, False, False,
                                           limit=f"a number from -{_SCALE} to {_SCALE}"))
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
                "reduction": REDUCTION, "act": enum("relu", "gelu", "silu", "tanh"), "dropout": DROPOUT,
                "scale": NUMBER, "residual": BOOL},
    "prompt": {"tokens": POS_INT, "init": PROMPT_INIT},
    "tune": {"params": SELECTOR},
    "sparse": {"on": SELECTOR, "density": DENSITY, "select": enum("magnitude", "random"),
               "seed": SEED},
    "quantize": {"on": SELECTOR, "block": POS_INT, "double": BOOL, "compute": enum("float32", "bfloat16")},
}
