"""Number literals Python cannot hold: too many digits, or not finite as a float.

Before: more than 4,300 digits raised Python's ``ValueError`` (exit 3); a
literal such as ``1e400`` silently became ``inf`` and failed later, far
from the cause. Now each is refused where it is written, naming the limit.
"""

from __future__ import annotations

import pytest

from adaptlang.limits import MAX_NUMBER_LITERAL_CHARS

from .hostile import HEADER, expect_accepted, expect_refused

LONG = f"longer than the limit of {MAX_NUMBER_LITERAL_CHARS} (MAX_NUMBER_LITERAL_CHARS)"
DELTA = "lora d {\n    on q_proj\n}\n"


def block(prop: str) -> str:
    return HEADER + "lora d {\n    on q_proj\n    " + prop + "\n}\n"


# (id, text, words, (line, column))
REFUSED = [
    ("let_int_5000_digits", HEADER + "let a = " + "9" * 5000 + "\n", "number literal of 5,000 characters", (2, 9)),
    ("rank_int_4301_digits", block("rank " + "9" * 4301), "number literal of 4,301 characters", (4, 10)),
    ("rank_int_101_digits", block("rank " + "1" * 101), LONG, (4, 10)),
    ("let_float_5000_digits", HEADER + "let a = 0." + "0" * 5000 + "1\n", LONG, (2, 9)),
    ("let_exponent_200_digits", HEADER + "let a = 1e" + "9" * 200 + "\n", LONG, (2, 9)),
    ("percent_5000_digits", block("dropout " + "1" * 5000 + "%"), "percentage literal of 5,001 characters", (4, 13)),
    ("header_5000_digits", "adaptlang " + "1" * 5000 + "\n", "version literal of 5,000 characters", (1, 11)),
    ("index_5000_digits", HEADER + "lora d {\n    on layers[" + "9" * 5000 + "].q_proj\n}\n",
     "index literal of 5,000 characters", (3, 15)),
    ("slice_5000_digits", HEADER + "lora d {\n    on layers[1:" + "9" * 5000 + "].q_proj\n}\n",
     "index literal of 5,000 characters", (3, 17)),
    ("rank_1e400", block("rank 1e400"), "the number 1e400 is too large to represent", (4, 10)),
    ("alpha_1e400", block("alpha 1e400"), "too large to represent", (4, 11)),
    ("let_1e400", HEADER + "let a = 1e400\n", "too large to represent", (2, 9)),
    ("let_minus_1e400", HEADER + "let a = -1e400\n", "too large to represent", (2, 10)),
    ("let_1e400_percent", HEADER + "let a = 1e400%\n", "too large to represent", (2, 9)),
    ("task_weight_1e400", HEADER + DELTA + "task t = 1e400 * d\n", "too large to represent", (5, 10)),
    ("dropout_1e-400", block("dropout 1e-400"), "the number 1e-400 is too small to represent", (4, 13)),
    ("let_tiny_5e-324_halved", HEADER + "let a = 2e-324\n", "too small to represent", (2, 9)),
]


@pytest.mark.parametrize("text, words, where", [pytest.param(t, w, p, id=i) for i, t, w, p in REFUSED])
def test_unrepresentable_literals_are_located_errors(text, words, where, tmp_path):
    expect_refused(text, words, tmp_path, where)


# (id, text): literals at the edge of what is representable are the spec layer's to judge, not refused here.
ACCEPTED = [
    ("let_zero_written_long", HEADER + "let a = 0.000e-999\n"),
    ("let_smallest_subnormal", HEADER + "let a = 5e-324\n"),
    ("let_leading_zeros", HEADER + "let a = " + "0" * 99 + "1\n"),
]


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in ACCEPTED])
def test_representable_literals_are_accepted(text, tmp_path):
    expect_accepted(text, tmp_path)


@pytest.mark.parametrize("text", [pytest.param(HEADER + "let a = 1e308\n", id="let_1e308"),
                                  pytest.param(HEADER + "let a = " + "1" * MAX_NUMBER_LITERAL_CHARS + "\n",
                                               id="let_int_100_digits")])
def test_representable_literals_parse_and_the_spec_layer_judges_their_range(text):
    from adaptlang.errors import SpecError
    from adaptlang.spec import load_spec
    from adaptlang.syntax.parser import parse_text

    parse_text(text)  # the literal itself is fine
    with pytest.raises(SpecError, match=r"MAX_SPEC_NUMBER"):
        load_spec(text)
