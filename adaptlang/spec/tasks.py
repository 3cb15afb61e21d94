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

import math
from dataclasses import dataclass
from typing import Any, Mapping

from adaptlang.errors import Diagnostic, DiagnosticSink, Span, did_you_mean
from adaptlang.spec import model as ir
from adaptlang.limits import MAX_TASK_WEIGHT
from adaptlang.spec.values import SilentProblem, ValueProblem, check_magnitude, evaluate, format_number, show_chain
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


class _Broken(Exception):
    """A task whose expansion already failed (reported once)."""


def _task_refs(expr: Any) -> list[ast.TaskRef]:
    """Every name a task expression mentions, in written order (iterative walk)."""
    found: list[ast.TaskRef] = []
    todo = [expr]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.TaskRef):
            found.append(node)
        elif isinstance(node, ast.TaskSum):
            todo.extend(reversed(node.terms))
        elif isinstance(node, (ast.TaskGroup,)):
            todo.append(node.inner)
        elif isinstance(node, (ast.TaskFrozen, ast.TaskScale)):
            todo.append(node.operand)
    return found


class TaskFlattener:
    """Expands and merges every task of a spec.

    Tasks are expanded dependencies first, depth first with an explicit stack
    (a chain of thousands of tasks is no Python recursion), and each task's
    expansion is kept merged: one occurrence per (delta, frozen), weights
    added. So ``task t2 = t1 + t1`` forty levels deep costs forty small
    merges, not 2**40 occurrences.

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

    def error(self, message: str, span: Span, hint: str | None = None, notes: tuple[str, ...] = ()) -> None:
        """Records a problem once per source location."""
        if span in self.reported:
            return
        self.reported.add(span)
        self.sink.add(Diagnostic(message, span=span, hint=hint, notes=notes))

    def expand_task(self, root: str) -> list[Occurrence]:
        """The merged occurrences of a task's expression at weight 1, unfrozen (memoised).

        Raises:
            _Broken: The task, or one it uses, failed (already reported).
        """
        if root not in self.expanded and root not in self.broken:
            self._resolve(root)
        if root in self.broken:
            raise _Broken(root)
        return self.expanded[root]

    def _needs(self, name: str) -> list[ast.TaskRef]:
        """The tasks ``name`` uses that are not expanded yet, first-needed last (a pop order)."""
        refs = [r for r in _task_refs(self.tasks[name].decl.expr)
                if r.name not in self.deltas and r.name in self.tasks
                and r.name not in self.expanded and r.name not in self.broken]
        refs.reverse()
        return refs

    def _resolve(self, root: str) -> None:
        """Expands ``root`` after every task it uses; a cycle breaks every task waiting on it."""
        stack: list[tuple[str, list[ast.TaskRef]]] = [(root, self._needs(root))]
        on_stack = {root}
        while stack:
            name, needs = stack[-1]
            while needs and (needs[-1].name in self.expanded or needs[-1].name in self.broken):
                needs.pop()
            if not needs:
                stack.pop()
                on_stack.discard(name)
                try:
                    self.expanded[name] = self.expand_one(name)
                except _Broken:
                    self.broken.add(name)
                continue
            ref = needs.pop()
            if ref.name in on_stack:
                names = [n for n, _ in stack]
                chain = [*names[names.index(ref.name):], ref.name]
                self.error(f"task '{ref.name}' refers to itself: {show_chain(chain)}", ref.span,
                           "a task can use other tasks, but not one that leads back to itself")
                self.broken.update(names)
                return
            stack.append((ref.name, self._needs(ref.name)))
            on_stack.add(ref.name)

    def expand_one(self, name: str) -> list[Occurrence]:
        """One task's merged occurrences, every task it uses already expanded.

        The walk goes top down with an explicit stack, carrying the product
        of the weights, whether under ``frozen(...)`` and the innermost weight.
        """
        source = self.tasks[name]
        occurrences: list[Occurrence] = []
        todo: list[tuple[Any, float, bool, Span | None]] = [(source.decl.expr, 1.0, False, None)]
        while todo:
            expr, weight, frozen, weight_span = todo.pop()
            if isinstance(expr, ast.TaskRef):
                occurrences.extend(self.expand_ref(expr, weight, frozen, weight_span))
            elif isinstance(expr, ast.TaskSum):
                todo.extend((term, weight, frozen, weight_span) for term in reversed(expr.terms))
            elif isinstance(expr, ast.TaskGroup):
                todo.append((expr.inner, weight, frozen, weight_span))
            elif isinstance(expr, ast.TaskFrozen):
                todo.append((expr.operand, weight, True, weight_span))
            elif isinstance(expr, ast.TaskScale):
                scale = self.weight(expr.weight, source.constants)
                todo.append((expr.operand, weight * scale, frozen, expr.weight.span))
            else:  # pragma: no cover - the grammar has no other
                raise TypeError(f"not a task expression: {expr!r}")
        return self.combine(name, occurrences)

    def expand_ref(self, ref: ast.TaskRef, weight: float, frozen: bool,
                   weight_span: Span | None) -> list[Occurrence]:
        """A delta's one occurrence, or a task's (already expanded) occurrences, scaled."""
        if ref.name in self.deltas:
            return [Occurrence(ref.name, weight, frozen, ref.span, weight_span)]
        if ref.name in self.tasks:
            if ref.name in self.broken:
                raise _Broken(ref.name)
            return [Occurrence(o.delta, o.weight * weight, o.frozen or frozen, o.span, o.weight_span or weight_span)
                    for o in self.expanded[ref.name]]
        known = [*self.deltas, *self.tasks]
        self.error(f"unknown delta or task '{ref.name}'", ref.span,
                   did_you_mean(ref.name, known) or "declare it, or bring it in with `use`")
        raise _Broken(ref.name)

    def combine(self, name: str, occurrences: list[Occurrence]) -> list[Occurrence]:
        """One occurrence per (delta, frozen), first place kept, weights added and bounded.

        Raises:
            _Broken: A delta's weight past ``MAX_TASK_WEIGHT`` (reported).
        """
        merged: dict[tuple[str, bool], Occurrence] = {}
        for occ in occurrences:
            key = (occ.delta, occ.frozen)
            first = merged.get(key)
            merged[key] = occ if first is None else Occurrence(
                first.delta, first.weight + occ.weight, first.frozen, first.span,
                first.weight_span or occ.weight_span)
        for occ in merged.values():
            if not math.isfinite(occ.weight) or occ.weight > MAX_TASK_WEIGHT:
                self.error(f"the weight of '{occ.delta}' in task '{name}' comes to {format_number(occ.weight)}, "
                           f"past the limit of {MAX_TASK_WEIGHT:,.0f} (MAX_TASK_WEIGHT)",
                           self.tasks[name].decl.name_span,
                           "weights multiply through nested tasks and add up when a delta repeats")
                raise _Broken(name)
        return list(merged.values())

    def weight(self, expr: Any, constants: Mapping[str, float]) -> float:
        """A task weight: a positive number (or constant)."""
        try:
            value = float(check_magnitude(evaluate(expr, constants), expr.span, "this weight"))
        except ValueProblem as problem:
            if not isinstance(problem, SilentProblem):
                self.error(problem.message, problem.span, problem.hint)
            raise _Broken("weight") from None
        if value <= 0:
            self.error(f"a task weight must be a positive number, found {format_number(value)}", expr.span,
                       "leave the delta out of the task instead of weighting it by zero or less")
            raise _Broken("weight")
        if value > MAX_TASK_WEIGHT:
            self.error(f"a task weight must be at most {MAX_TASK_WEIGHT:,.0f} (MAX_TASK_WEIGHT), "
                       f"found {format_number(value)}", expr.span, "real task weights are between 0.1 and 10")
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
        except _Broken:
            continue
        task = flattener.merge(name, occurrences)
        if task is not None:
            result[name] = task
    return result
