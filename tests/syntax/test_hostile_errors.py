"""Thousands of errors: reported in linear time, the first ones per file, the rest counted.

Before: each diagnostic re-split the whole source into lines to find its own,
so 20,000 errors did not finish in 60 s; and all of them were printed.
"""

from __future__ import annotations

import time

import pytest

from adaptlang.errors import Diagnostic, Span, SpecError
from adaptlang.limits import MAX_ERRORS_PER_FILE
from adaptlang.spec import load_spec

from .hostile import HEADER, cli

N = 20_000
NOTE = f"more errors not shown (MAX_ERRORS_PER_FILE = {MAX_ERRORS_PER_FILE})"

# (id, text, message of each error, how many errors the spec has)
MANY = [
    ("unknown_property_20000_blocks",
     HEADER + "".join(f"lora d{i} {{\n    on q_proj\n    rnak 8\n}}\n" for i in range(N)),
     "unknown property 'rnak' for lora", N),
    ("duplicate_let_20000", HEADER + "let a = 1\n" * (N + 1), "constant 'a' is defined twice", N),
    ("unknown_constant_20000", HEADER + "".join(f"let a{i} = b\n" for i in range(N)), "unknown constant 'b'", N),
]


@pytest.mark.parametrize("text, message, count", [pytest.param(t, m, c, id=i) for i, t, m, c in MANY])
def test_many_errors_load_fast_and_are_capped(text, message, count):
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(text)
    assert time.perf_counter() - start < 60
    diags = info.value.diagnostics
    assert len(diags) == MAX_ERRORS_PER_FILE + 1
    assert all(message in d.message and d.source_line is not None for d in diags[:-1])
    assert diags[-1].severity == "note" and f"{count - MAX_ERRORS_PER_FILE:,} {NOTE}" in diags[-1].message


@pytest.mark.parametrize("text, message, count", [pytest.param(t, m, c, id=i) for i, t, m, c in MANY[:2]])
def test_many_errors_through_the_cli(text, message, count, tmp_path):
    path = tmp_path / "many.adapt"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    result = cli("check", path)
    assert time.perf_counter() - start < 60
    assert result.exit_code == 1, result.output[-2000:]
    assert result.output.count(message) == MAX_ERRORS_PER_FILE
    assert f"{count - MAX_ERRORS_PER_FILE:,} {NOTE}" in result.output


def test_attaching_source_to_many_diagnostics_is_linear():
    text = "x\n" * 200_000
    diags = [Diagnostic("bad", span=Span("f", i, 1, i, 2)) for i in range(1, 200_001)]
    start = time.perf_counter()
    error = SpecError(diags).with_source(text, "f")
    assert time.perf_counter() - start < 30
    assert len(error.diagnostics) == MAX_ERRORS_PER_FILE + 1
    assert error.diagnostics[0].source_line == "x"


def test_capping_keeps_each_files_first_errors_and_is_idempotent():
    diags = [Diagnostic("bad", span=Span(f, i, 1, i, 2)) for f in ("a", "b") for i in range(1, 150)]
    diags.append(Diagnostic("no place", obj="--set"))
    error = SpecError(diags)
    kept = error.diagnostics
    assert [d.span.file for d in kept if d.span] == ["a"] * MAX_ERRORS_PER_FILE + ["b"] * MAX_ERRORS_PER_FILE
    notes = [d for d in kept if d.severity == "note"]
    assert [(n.obj, n.message.split()[0]) for n in notes] == [("a", "49"), ("b", "49")]
    assert SpecError(kept).diagnostics == kept
