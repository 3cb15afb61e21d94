"""Resolving a file's ``let`` constants: any order, cycles and unknown names reported.

Constants are declarative like everything else in a spec: ``let a = b * 2``
may come before ``let b = 4``. Constants are resolved depth first over the
names each definition mentions, with an explicit stack rather than Python
recursion (5,000 ``let`` lines written in reverse order are a chain 5,000
deep), so every constant a definition needs is known before it is evaluated.
A constant whose definition fails is reported once; constants built on it
stay silent (their problem is the same one). Every ``let`` value, like every
step of its arithmetic, lies within :data:`~adaptlang.limits.MAX_SPEC_NUMBER`.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from adaptlang.errors import Diagnostic, DiagnosticSink, UsageError
from adaptlang.limits import MAX_SPEC_NUMBER
from adaptlang.spec.values import (
    BROKEN, SilentProblem, ValueProblem, check_magnitude, evaluate, format_number, show_chain)
from adaptlang.syntax import ast

__all__ = ["check_override", "resolve_constants"]


def check_override(name: str, value: Any) -> int | float:
    """Checks one ``--set NAME=VALUE`` value: a finite number within ``MAX_SPEC_NUMBER``.

    Raises:
        UsageError: A value that is not a number, not finite, or past the limit
            (named with the constant).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(Diagnostic(f"the value of constant '{name}' must be a number, "
                                    f"not {type(value).__name__}", obj="--set"))
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(Diagnostic(f"the value of constant '{name}' is not a finite number ({value})",
                                    obj="--set", hint="give a plain number, e.g. --set r=16"))
    if abs(value) > MAX_SPEC_NUMBER:
        raise UsageError(Diagnostic(
            f"the value of constant '{name}' is too large: {format_number(value)} is past the limit "
            f"of ±{format_number(MAX_SPEC_NUMBER)} (MAX_SPEC_NUMBER)", obj="--set",
            hint="numbers in a spec are ranks, widths, scales and weights: far smaller than this"))
    return value


def evaluate_let(let: ast.Let, constants: Mapping[str, float]) -> float:
    """Evaluates a ``let`` value, which must be plain arithmetic within ``MAX_SPEC_NUMBER``."""
    value = evaluate(let.value, constants)
    return check_magnitude(value, let.value.span, f"constant '{let.name}'")


def _names_in(expr: Any) -> list[str]:
    """The constant names an expression mentions, in written order (iterative walk)."""
    found: list[str] = []
    todo = [expr]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Name):
            found.append(node.name)
        elif isinstance(node, ast.Group):
            todo.append(node.inner)
        elif isinstance(node, ast.Neg):
            todo.append(node.operand)
        elif isinstance(node, ast.BinOp):
            todo.append(node.right)
            todo.append(node.left)
    return found


class _Visible(Mapping[str, Any]):
    """The constants an expression sees: every ``let`` name of the file (for suggestions), by value."""

    def __init__(self, lets: Mapping[str, ast.Let], values: Mapping[str, Any]):
        self.lets = lets
        self.values = values

    def __contains__(self, name: object) -> bool:
        return name in self.lets

    def __getitem__(self, name: str) -> Any:
        return self.values[name]  # resolved first: dependencies come before their users

    def __iter__(self) -> Iterator[str]:
        return iter(self.lets)

    def __len__(self) -> int:
        return len(self.lets)


class _Resolver:
    """Resolution state: values, broken names and the depth-first stack."""

    def __init__(self, lets: dict[str, ast.Let], overrides: Mapping[str, float], sink: DiagnosticSink):
        self.lets = lets
        self.overrides = overrides
        self.sink = sink
        # Resolved values; a broken constant maps to BROKEN so what uses it stays quiet.
        self.values: dict[str, Any] = {}

    def resolve(self, root: str) -> None:
        """Resolves ``root`` and everything it needs, dependencies first."""
        if root in self.values:
            return
        # Each frame: (name, the names its definition still needs, in order).
        stack: list[tuple[str, list[str]]] = [(root, self._needs(root))]
        on_stack = {root}
        while stack:
            name, needs = stack[-1]
            while needs and needs[-1] in self.values:
                needs.pop()
            if not needs:
                stack.pop()
                on_stack.discard(name)
                self._evaluate(name)
                continue
            dep = needs.pop()
            if dep in on_stack:
                chain = [n for n, _ in stack]
                cycle = show_chain([*chain[chain.index(dep):], dep])
                self.sink.add(Diagnostic(f"constant '{dep}' is defined in terms of itself: {cycle}",
                                         span=self.lets[dep].name_span, hint="break the cycle with a number"))
                for n, _ in stack:  # the cycle and everything waiting on it
                    self.values[n] = BROKEN
                return
            stack.append((dep, self._needs(dep)))
            on_stack.add(dep)

    def _needs(self, name: str) -> list[str]:
        """The unresolved constants ``name``'s definition mentions, first-needed last (a pop order)."""
        if name in self.overrides:
            return []
        seen: set[str] = set()
        needs = []
        for n in _names_in(self.lets[name].value):
            if n in self.lets and n not in self.values and n not in seen:
                seen.add(n)
                needs.append(n)
        needs.reverse()
        return needs

    def _evaluate(self, name: str) -> None:
        """Evaluates one constant whose dependencies are resolved (or takes its override)."""
        if name in self.overrides:
            self.values[name] = self.overrides[name]
            return
        try:
            self.values[name] = evaluate_let(self.lets[name], _Visible(self.lets, self.values))
        except SilentProblem:
            self.values[name] = BROKEN
        except ValueProblem as problem:
            self.values[name] = BROKEN
            self.sink.add(Diagnostic(problem.message, span=problem.span, hint=problem.hint))


def resolve_constants(lets: list[ast.Let], overrides: Mapping[str, float],
                      sink: DiagnosticSink) -> dict[str, float]:
    """Returns the file's constants by name, in written order.

    Args:
        lets: The file's ``let`` statements.
        overrides: Values that replace a ``let`` of the same name (``--set``),
            already checked by :func:`check_override`.
        sink: Where problems go (duplicates, unknown names, cycles, division
            by zero, values past ``MAX_SPEC_NUMBER``).

    Returns:
        Every constant by name; a broken one (reported here) has the value
        :data:`~adaptlang.spec.values.BROKEN`, so later uses stay quiet.
    """
    by_name: dict[str, ast.Let] = {}
    for let in lets:
        if let.name in by_name:
            first = by_name[let.name].name_span
            sink.add(Diagnostic(f"constant '{let.name}' is defined twice", span=let.name_span,
                                hint="remove one of the definitions",
                                notes=(f"first defined at {first.file}:{first.line}:{first.col}",)))
            continue
        by_name[let.name] = let
    resolver = _Resolver(by_name, overrides, sink)
    for name in by_name:
        resolver.resolve(name)
    return {name: resolver.values.get(name, BROKEN) for name in by_name}
