"""Nesting a few hundred deep is a located error naming the limit; long flat chains are fine.

Before the limit, each of these was a ``RecursionError`` (exit 3) in the tree
builder; the limit is counted on the token stream, so nothing recurses.
"""

from __future__ import annotations

import time

import pytest

from adaptlang.limits import MAX_NESTING_DEPTH
from adaptlang.syntax.parser import parse_selector

from .hostile import HEADER, expect_accepted, expect_refused

N = 500
DELTA = "lora d {\n    on q_proj\n}\n"
WORDS = f"nested more than {MAX_NESTING_DEPTH} deep (MAX_NESTING_DEPTH)"

# (id, text, (line, column) of the bracket or sign that went one past the limit)
TOO_DEEP = [
    ("let_parens", HEADER + "let a = " + "(" * N + "1" + ")" * N + "\n", (2, 9 + MAX_NESTING_DEPTH)),
    ("let_parens_10000", HEADER + "let a = " + "(" * 10_000 + "1" + ")" * 10_000 + "\n", (2, 9 + MAX_NESTING_DEPTH)),
    ("let_parens_unclosed", HEADER + "let a = " + "(" * N + "\n", (2, 9 + MAX_NESTING_DEPTH)),
    ("let_unary_minus", HEADER + "let a = " + "-" * N + "1\n", (2, 9 + MAX_NESTING_DEPTH)),
    ("let_spaced_minus", HEADER + "let a = " + "- " * N + "1\n", (2, 9 + 2 * MAX_NESTING_DEPTH)),
    ("let_minus_parens", HEADER + "let a = " + "-(" * N + "1" + ")" * N + "\n", (2, 9 + MAX_NESTING_DEPTH)),
    ("let_right_nested_sum", HEADER + "let a = " + "1 + (" * N + "1" + ")" * N + "\n",
     (2, 13 + 5 * MAX_NESTING_DEPTH)),
    ("property_parens", HEADER + "lora d {\n    rank " + "(" * N + "8" + ")" * N + "\n}\n",
     (3, 10 + MAX_NESTING_DEPTH - 1)),
    ("task_parens", HEADER + DELTA + "task t = " + "(" * N + "d" + ")" * N + "\n", (5, 10 + MAX_NESTING_DEPTH)),
    ("task_frozen", HEADER + DELTA + "task t = " + "frozen(" * N + "d" + ")" * N + "\n",
     (5, 16 + 7 * MAX_NESTING_DEPTH)),
    ("task_weight_parens", HEADER + DELTA + "task t = " + "(2 * " * N + "d" + ")" * N + "\n",
     (5, 10 + 5 * MAX_NESTING_DEPTH)),
    ("selector_alternatives", HEADER + "lora d {\n    on " + "{" * N + "q_proj" + "}" * N + "\n}\n",
     (3, 8 + MAX_NESTING_DEPTH - 1)),
    ("override_alternatives", HEADER + "lora d {\n    on q_proj\n    rank 8 for " + "{" * N + "q" + "}" * N + "\n}\n",
     (4, 16 + MAX_NESTING_DEPTH - 1)),
]


@pytest.mark.parametrize("text, where", [pytest.param(t, w, id=i) for i, t, w in TOO_DEEP])
def test_too_deep_is_a_located_error(text, where, tmp_path):
    start = time.perf_counter()
    expect_refused(text, WORDS, tmp_path, where)
    assert time.perf_counter() - start < 30


def test_too_deep_selector_option():
    with pytest.raises(Exception) as info:
        parse_selector("{" * N + "q" + "}" * N)
    assert WORDS in str(info.value) and type(info.value).__name__ == "SpecError"


D = MAX_NESTING_DEPTH
# (id, text): as deep as the limit allows, or long and flat: accepted, formatted, checked.
ACCEPTED = [
    ("let_parens_at_limit", HEADER + "let a = " + "(" * D + "1" + ")" * D + "\n"),
    ("let_minus_at_limit", HEADER + "let a = " + "-" * D + "1\n"),
    ("task_frozen_at_limit", HEADER + DELTA + "task t = " + "frozen(" * D + "d" + ")" * D + "\n"),
    ("selector_alternatives_at_limit", HEADER + "lora d {\n    on " + "{" * (D - 1) + "q_proj" + "}" * (D - 1) + "\n}\n"),
    ("selector_list_5000", HEADER + "lora d {\n    on " + ", ".join(["q_proj"] * 5000) + "\n}\n"),
    ("selector_alternatives_5000_wide", HEADER + "lora d {\n    on {" + ", ".join(["q_proj"] * 5000) + "}\n}\n"),
    ("task_sum_5000", HEADER + DELTA + "task t = " + " + ".join(["0.5 * d"] * 5000) + "\n"),
]
# Long flat arithmetic: the parser and formatter handle it; evaluating it is spec/values.py's.
FLAT_ARITHMETIC = [
    ("let_sum_5000", HEADER + "let a = " + " + ".join(["1"] * 5000) + "\n", 5000),
    ("let_product_5000", HEADER + "let a = 2" + " * 1" * 5000 + "\n", 2),
    ("let_difference_5000", HEADER + "let a = 5000" + " - 1" * 5000 + "\n", 0),
    ("rank_sum_5000", HEADER + "lora d {\n    on q_proj\n    rank " + " + ".join(["1"] * 5000) + "\n}\n", None),
]


def test_every_construct_at_the_limit_compiles(tmp_path):
    text = (HEADER + "model llama\nlora d {\n    on layers[*].self_attn." + "{" * (D - 1) + "q_proj" + "}" * (D - 1)
            + "\n}\nlet a = " + "(" * D + "1" + ")" * D + "\ntask t = " + "frozen(" * D + "d" + ")" * D + "\n")
    expect_accepted(text, tmp_path, compile_too=True)


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in ACCEPTED])
def test_deep_to_the_limit_and_long_flat_inputs_are_accepted(text, tmp_path):
    expect_accepted(text, tmp_path)


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t, _ in FLAT_ARITHMETIC])
def test_long_flat_arithmetic_parses_and_formats(text):
    from adaptlang.syntax.format import format_text

    once = format_text(text)
    assert format_text(once) == once


@pytest.mark.parametrize("text, value", [pytest.param(t, v, id=i) for i, t, v in FLAT_ARITHMETIC])
def test_long_flat_arithmetic_loads_and_checks(text, value, tmp_path):
    spec = expect_accepted(text, tmp_path)
    if value is not None:
        assert spec.constants["a"] == value
