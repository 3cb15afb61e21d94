"""Resolving a file's ``let`` constants: any order, cycles and unknown names reported.

Constants are declarative like everything else in a spec: ``let a = b * 2``
may come before ``let b = 4``. Each constant is evaluated on first use with
a stack that detects cycles; a constant whose definition fails is reported
once, and constants built on it stay silent (their problem is the same one).
"""

from __future__ import annotations

from typing import Iterator, Mapping

from adaptlang.errors import Diagnostic, DiagnosticSink
from adaptlang.spec.values import BROKEN, ValueProblem, evaluate
from adaptlang.syntax import ast

__all__ = ["resolve_constants"]


class _Poisoned(Exception):
    """A constant that depends on one already reported as broken."""


class _LazyConstants(Mapping[str, float]):
    """A mapping that evaluates each ``let`` the first time it is looked up."""

    def __init__(self, lets: dict[str, ast.Let], overrides: Mapping[str, float], sink: DiagnosticSink):
        self.lets = lets
        self.overrides = overrides
        self.sink = sink
        self.values: dict[str, float] = {}
        self.broken: set[str] = set()
        self.stack: list[str] = []

    def __contains__(self, name: object) -> bool:
        return name in self.lets

    def __iter__(self) -> Iterator[str]:
        return iter(self.lets)

    def __len__(self) -> int:
        return len(self.lets)

    def __getitem__(self, name: str) -> float:
        if name not in self.lets:
            raise KeyError(name)
        if name in self.broken:
            raise _Poisoned(name)
        if name in self.values:
            return self.values[name]
        if name in self.stack:
            chain = " -> ".join([*self.stack[self.stack.index(name):], name])
            raise ValueProblem(f"constant '{name}' is defined in terms of itself: {chain}",
                               self.lets[name].name_span, "break the cycle with a number")
        return self.resolve(name)

    def resolve(self, name: str) -> float:
        """Evaluates one constant (or takes its override), recording any problem."""
        if name in self.overrides:
            self.values[name] = self.overrides[name]
            return self.values[name]
        let = self.lets[name]
        self.stack.append(name)
        try:
            value = evaluate_let(let, self)
        except ValueProblem as problem:
            # Reported by the innermost constant that failed; the ones built on it stay quiet.
            self.broken.add(name)
            self.sink.add(Diagnostic(problem.message, span=problem.span, hint=problem.hint))
            raise _Poisoned(name) from None
        except _Poisoned:
            self.broken.add(name)
            raise
        finally:
            self.stack.pop()
        self.values[name] = value
        return value


def evaluate_let(let: ast.Let, constants: Mapping[str, float]) -> float:
    """Evaluates a ``let`` value, which must be plain arithmetic."""
    return evaluate(let.value, constants)


def resolve_constants(lets: list[ast.Let], overrides: Mapping[str, float],
                      sink: DiagnosticSink) -> dict[str, float]:
    """Returns the file's constants by name, in written order.

    Args:
        lets: The file's ``let`` statements.
        overrides: Values that replace a ``let`` of the same name (``--set``).
        sink: Where problems go (duplicates, unknown names, cycles, division by zero).

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
    lazy = _LazyConstants(by_name, overrides, sink)
    for name in by_name:
        try:
            lazy[name]
        except _Poisoned:
            pass
    return {name: lazy.values.get(name, BROKEN) for name in by_name}
