"""Hostile arithmetic and task algebra: blow-ups and deep chains finish fast, with a located error or a result.

Issue 10, section 4: 40 lines of ``let aN+1 = aN * aN`` (870 bytes) ran
forever (Python squaring a big integer 40 times); long chains recursed. Every
operand and result is now bounded (``MAX_SPEC_NUMBER``), constants and tasks
are resolved with explicit stacks, and tasks are merged per expansion. The
time bounds are generous: the inputs used to hang (or blow up exponentially).
Expressions of thousands of terms are built as AST nodes here, so these
tests do not depend on the parser's own nesting limit; a flat sum is assumed
to parse as a left-deep tree of ``BinOp``.
"""

from __future__ import annotations

import re
import time

import pytest

from adaptlang.errors import DiagnosticSink, Span, SpecError
from adaptlang.spec import load_spec
from adaptlang.spec.constants import resolve_constants
from adaptlang.spec.values import evaluate
from adaptlang.syntax import ast

H = "adaptlang 1\n"
SPAN = Span("<test>", 1, 1, 1, 2)
LORA = "lora a {\n    on q_proj\n}\n"
FAST = 10.0  # seconds; each of these used to hang or exhaust memory


def squares(first: str, lines: int = 40) -> str:
    return H + f"let a0 = {first}\n" + "".join(f"let a{i + 1} = a{i} * a{i}\n" for i in range(lines))


def doubling_tasks(levels: int, weight: str = "") -> str:
    body = H + LORA + "task t0 = a\n"
    return body + "".join(f"task t{i + 1} = {weight}t{i} + {weight}t{i}\n" for i in range(levels))


BLOWUPS = [
    ("squares-of-2", squares("2"), 8,
     r"the result is too large: 1.844e\+19 is past the limit of ±1e\+15 \(MAX_SPEC_NUMBER\)"),
    ("squares-of-10", squares("10"), 6, r"too large.*MAX_SPEC_NUMBER"),
    ("squares-of-1.5", squares("1.5"), 9, r"too large.*MAX_SPEC_NUMBER"),
    ("squares-of-minus-3", squares("-3"), 7, r"too large.*MAX_SPEC_NUMBER"),
    ("squares-reversed", H + "".join(f"let a{i + 1} = a{i} * a{i}\n" for i in reversed(range(40)))
     + "let a0 = 2\n", 36, r"too large.*MAX_SPEC_NUMBER"),
    ("task-doubling-40", doubling_tasks(40), 25, r"comes to 1048576, past the limit of 1,000,000"),
]


@pytest.mark.parametrize("text, line, message", [c[1:] for c in BLOWUPS], ids=[c[0] for c in BLOWUPS])
def test_blowups_stop_at_the_limit_fast(text, line, message):
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(text)
    assert time.perf_counter() - start < FAST
    rendered = err.value.render()
    assert err.value.exit_code == 1 and re.search(message, rendered), rendered
    assert len(err.value.diagnostics) == 1, rendered  # later constants built on it stay quiet
    assert err.value.diagnostics[0].span.line == line, rendered


def _left_deep_sum(n: int) -> ast.BinOp:
    node: object = ast.Number(value=1, text="1", span=SPAN)
    for _ in range(n - 1):
        node = ast.BinOp(op="+", left=node, right=ast.Number(value=1, text="1", span=SPAN), span=SPAN)
    return node  # type: ignore[return-value]


def _right_deep_product(n: int) -> ast.BinOp:
    node: object = ast.Number(value=1, text="1", span=SPAN)
    for _ in range(n - 1):
        node = ast.BinOp(op="*", left=ast.Neg(operand=ast.Group(inner=ast.Number(value=1, text="1", span=SPAN),
                                                                 span=SPAN), span=SPAN), right=node, span=SPAN)
    return node  # type: ignore[return-value]


@pytest.mark.parametrize("build, expected", [
    pytest.param(lambda: _left_deep_sum(20_000), 20_000, id="flat-sum-20000-terms"),
    pytest.param(lambda: _right_deep_product(20_001), 1, id="right-deep-20000"),
])
def test_long_expressions_evaluate_without_recursion(build, expected):
    expr = build()
    start = time.perf_counter()
    assert evaluate(expr, {}) == expected
    assert time.perf_counter() - start < FAST


def test_a_let_chain_of_5000_in_reverse_order_resolves():
    n = 5000
    lets = [ast.Let(name=f"c{i}", value=ast.BinOp(op="+", left=ast.Name(name=f"c{i - 1}", span=SPAN),
                                                   right=ast.Number(value=1, text="1", span=SPAN), span=SPAN),
                    name_span=SPAN, span=SPAN) for i in range(n, 0, -1)]
    lets.append(ast.Let(name="c0", value=ast.Number(value=0, text="0", span=SPAN), name_span=SPAN, span=SPAN))
    sink = DiagnosticSink()
    start = time.perf_counter()
    values = resolve_constants(lets, {}, sink)
    assert time.perf_counter() - start < FAST
    assert not sink.diagnostics and values[f"c{n}"] == n


def test_a_let_cycle_5000_long_is_one_located_error():
    text = H + "".join(f"let c{i} = c{(i + 1) % 5000} + 1\n" for i in range(5000))
    with pytest.raises(SpecError) as err:
        load_spec(text)
    assert len(err.value.diagnostics) == 1
    assert "constant 'c0' is defined in terms of itself: c0 -> c1 -> c2" in err.value.render()


def test_a_task_chain_of_3000_in_reverse_order_flattens():
    n = 3000
    text = H + LORA + "".join(f"task t{i} = t{i - 1}\n" for i in range(n, 0, -1)) + "task t0 = a\n"
    start = time.perf_counter()
    spec = load_spec(text)
    assert time.perf_counter() - start < FAST
    assert [(t.delta, t.weight) for t in spec.tasks[f"t{n}"].terms] == [("a", 1.0)]


def test_halving_and_doubling_60_levels_stays_small_and_fast():
    start = time.perf_counter()
    spec = load_spec(doubling_tasks(60, weight="0.5 * "))
    assert time.perf_counter() - start < FAST
    assert [(t.delta, t.weight) for t in spec.tasks["t60"].terms] == [("a", 1.0)]


def test_a_task_cycle_through_a_long_chain_is_one_located_error():
    text = H + LORA + "".join(f"task t{i} = a + t{(i + 1) % 2000}\n" for i in range(2000))
    with pytest.raises(SpecError) as err:
        load_spec(text)
    assert len(err.value.diagnostics) == 1
    assert "task 't0' refers to itself: t0 -> t1 -> t2" in err.value.render()
