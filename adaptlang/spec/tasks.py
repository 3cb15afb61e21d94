"""Task algebra: flattening task expressions into weighted, frozen delta terms.

``task both = 0.5 * sentiment + 0.5 * qa`` expands every task name into its
expression, multiplies weights through the nesting, marks everything under
``frozen(...)`` frozen, and then merges repeated deltas: their weights add,
and the term keeps the place of the delta's first occurrence. The checks
that need the whole picture happen here: unknown names, tasks that refer to
themselves, non-positive weights, a weight on a prompt or tune delta, and a
delta that one task both freezes and trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from adaptlang.errors import Diagnostic, DiagnosticSink, Span, did_you_mean
from adaptlang.spec import model as ir
from adaptlang.spec.values import SilentProblem, ValueProblem, evaluate, format_number
from adaptlang.syntax import ast

__all__ = ["TaskSource", "flatten_tasks"]

#: Delta kinds that a weight cannot scale (they are in a task or not).
_UNWEIGHTED = ("prompt", "tune")


@dataclass(frozen=True)
class TaskSource:
    """A task declaration and the constants of the file it is written in."""

    decl: ast.TaskDecl
    constants: Mapping[str, float]


@dataclass(frozen=True)
class Occurrence:
    """One place a delta appears in a task's expanded expression.

    Attributes:
        delta: The delta's name.
        weight: The product of the weights around it.
        frozen: Under some ``frozen(...)``.
        span: The reference in the task that brought it in.
        weight_span: The innermost weight that scales it, if any.
    """

    delta: str
    weight: float
    frozen: bool
    span: Span
    weight_span: Span | None


class _Cycle(Exception):
    def __init__(self, chain: list[str], span: Span):
        super().__init__(" -> ".join(chain))
        self.chain = chain
        self.span = span


class _Broken(Exception):
    """A task whose expansion already failed (reported once)."""


class TaskFlattener:
    """Expands and merges every task of a spec.

    Args:
        tasks: Task sources by name, in declaration order.
        deltas: Delta kinds by name (every declared delta, even one that failed to lower).
        sink: Where problems go.
    """

    def __init__(self, tasks: dict[str, TaskSource], deltas: Mapping[str, str], sink: DiagnosticSink):
        self.tasks = tasks
        self.deltas = deltas
        self.sink = sink
        self.expanded: dict[str, list[Occurrence]] = {}
        self.broken: set[str] = set()
        self.reported: set[Span] = set()
        self.stack: list[str] = []

    def error(self, message: str, span: Span, hint: str | None = None, notes: tuple[str, ...] = ()) -> None:
        """Records a problem once per source location."""
        if span in self.reported:
            return
        self.reported.add(span)
        self.sink.add(Diagnostic(message, span=span, hint=hint, notes=notes))

    def expand_task(self, name: str) -> list[Occurrence]:
        """The occurrences of a task's expression at weight 1, unfrozen (memoised)."""
        if name in self.expanded:
            return self.expanded[name]
        if name in self.broken:
            raise _Broken(name)
        source = self.tasks[name]
        self.stack.append(name)
        try:
            result = self.expand(source.decl.expr, source.constants)
        except _Cycle as cycle:
            self.broken.add(name)
            if cycle.chain[0] == name:  # the cycle closes here: report it once
                self.error(f"task '{name}' refers to itself: {' -> '.join(cycle.chain)}", cycle.span,
                           "a task can use other tasks, but not one that leads back to itself")
                raise _Broken(name) from None
            raise
        except _Broken:
            self.broken.add(name)
            raise
        finally:
            self.stack.pop()
        self.expanded[name] = result
        return result

    def expand(self, expr: Any, constants: Mapping[str, float]) -> list[Occurrence]:
        """The occurrences of one task expression, in written order."""
        if isinstance(expr, ast.TaskRef):
            return self.expand_ref(expr)
        if isinstance(expr, ast.TaskSum):
            return [occ for term in expr.terms for occ in self.expand(term, constants)]
        if isinstance(expr, ast.TaskGroup):
            return self.expand(expr.inner, constants)
        if isinstance(expr, ast.TaskFrozen):
            return [Occurrence(o.delta, o.weight, True, o.span, o.weight_span)
                    for o in self.expand(expr.operand, constants)]
        if isinstance(expr, ast.TaskScale):
            weight = self.weight(expr.weight, constants)
            inner = self.expand(expr.operand, constants)
            return [Occurrence(o.delta, o.weight * weight, o.frozen, o.span,
                               o.weight_span or expr.weight.span) for o in inner]
        raise TypeError(f"not a task expression: {expr!r}")  # pragma: no cover - the grammar has no other

    def expand_ref(self, ref: ast.TaskRef) -> list[Occurrence]:
        """A delta's one occurrence, or a task's expansion."""
        if ref.name in self.deltas:
            return [Occurrence(ref.name, 1.0, False, ref.span, None)]
        if ref.name in self.tasks:
            if ref.name in self.stack:
                raise _Cycle([*self.stack[self.stack.index(ref.name):], ref.name], ref.span)
            return self.expand_task(ref.name)
        known = [*self.deltas, *self.tasks]
        self.error(f"unknown delta or task '{ref.name}'", ref.span,
                   did_you_mean(ref.name, known) or "declare it, or bring it in with `use`")
        raise _Broken(ref.name)

    def weight(self, expr: Any, constants: Mapping[str, float]) -> float:
        """A task weight: a positive number (or constant)."""
        try:
            value = float(evaluate(expr, constants))
        except ValueProblem as problem:
            if not isinstance(problem, SilentProblem):
                self.error(problem.message, problem.span, problem.hint)
            raise _Broken("weight") from None
        if value <= 0:
            self.error(f"a task weight must be a positive number, found {format_number(value)}", expr.span,
                       "leave the delta out of the task instead of weighting it by zero or less")
            raise _Broken("weight")
        return value

    def merge(self, name: str, occurrences: list[Occurrence]) -> ir.Task | None:
        """One term per delta (weights added, first place kept), with the whole-task checks."""
        decl = self.tasks[name].decl
        merged: dict[str, list[Any]] = {}
        ok = True
        for occ in occurrences:
            if occ.delta not in merged:
                merged[occ.delta] = [occ.weight, occ.frozen, occ]
                continue
            entry = merged[occ.delta]
            if entry[1] != occ.frozen:
                first: Occurrence = entry[2]
                self.error(f"'{occ.delta}' is both frozen and trained in task '{name}'", occ.span,
                           "a delta is either trained or frozen within one task",
                           (f"also used at {first.span.line}:{first.span.col}"
                            f"{' (frozen)' if first.frozen else ' (trained)'}",))
                ok = False
            entry[0] += occ.weight
        for delta, (weight, _, first) in merged.items():
            kind = self.deltas[delta]
            if kind in _UNWEIGHTED and abs(weight - 1.0) > 1e-12:
                scaled = next((o for o in occurrences if o.delta == delta and o.weight_span), first)
                self.error(f"a weight on a {kind} delta is an error: '{delta}' has weight "
                           f"{format_number(weight)} in task '{name}'", scaled.weight_span or scaled.span,
                           f"{kind} deltas are used whole; remove the weight (or the repeated use)")
                ok = False
        if not ok:
            return None
        terms = [ir.TaskTerm(delta=d, weight=w, frozen=f) for d, (w, f, _) in merged.items()]
        return ir.Task(name=name, terms=terms, span=decl.span)


def flatten_tasks(tasks: dict[str, TaskSource], deltas: Mapping[str, str],
                  sink: DiagnosticSink) -> dict[str, ir.Task]:
    """Flattens every task; problems go to ``sink`` and the failing tasks are left out.

    Args:
        tasks: Task sources by name, in declaration order.
        deltas: Delta kind by name, for every declared delta.
        sink: Where problems go.

    Returns:
        The tasks that flattened cleanly, in declaration order.
    """
    flattener = TaskFlattener(tasks, deltas, sink)
    result: dict[str, ir.Task] = {}
    for name in tasks:
        try:
            occurrences = flattener.expand_task(name)
        except (_Broken, _Cycle):
            continue
        task = flattener.merge(name, occurrences)
        if task is not None:
            result[name] = task
    return result
