"""Fuzz target for the parser: hostile shapes, not mutations of real specs.

``test_robustness.py`` mangles the repository's specs a few characters at a
time; this target generates what an attacker would: nesting of every
construct up to and past the limit, numbers of thousands of digits or
exponents, control characters, NUL, odd unicode, and one piece repeated
many times, each within a bounded size. The property is the front end's
promise: ``load_spec`` and ``format_text`` either succeed or raise an
``AdaptError`` that names a place (a span) or an object, never any other
exception. Each test is bounded to well under 20 s (``derandomize=True``, so
CI runs the same examples every time).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adaptlang.errors import AdaptError
from adaptlang.limits import MAX_NESTING_DEPTH
from adaptlang.spec import load_spec
from adaptlang.syntax.format import format_text
from adaptlang.syntax.parser import parse_selector

HEADER = "adaptlang 1\n"
DELTA = "lora d {\n    on q_proj\n}\n"

# (before the nesting, one level's opening, the core, one level's closing, after it)
NESTABLE = [
    (HEADER + "let a = ", "(", "1", ")", "\n"),
    (HEADER + "let a = ", "-", "1", "", "\n"),
    (HEADER + "let a = ", "-(", "1", ")", "\n"),
    (HEADER + "let a = ", "1 + (", "1", ")", "\n"),
    (HEADER + "let a = ", "2 * (", "r", ")", "\nlet r = 4\n"),
    (HEADER + "lora d {\n    rank ", "(", "8", ")", "\n}\n"),
    (HEADER + "lora d {\n    on ", "{", "q_proj", "}", "\n}\n"),
    (HEADER + "lora d {\n    on layers[*].", "{a, ", "q_proj", "}", "\n}\n"),
    (HEADER + "lora d {\n    on q_proj\n    rank 8 for ", "{", "q", "}", "\n}\n"),
    (HEADER + DELTA + "task t = ", "(", "d", ")", "\n"),
    (HEADER + DELTA + "task t = ", "frozen(", "d", ")", "\n"),
    (HEADER + DELTA + "task t = ", "0.5 * (", "d", ")", "\n"),
    (HEADER + DELTA + "task t = ", "(d + ", "d", ")", "\n"),
]


@st.composite
def nested(draw) -> str:
    before, opening, core, closing, after = draw(st.sampled_from(NESTABLE))
    depth = draw(st.integers(0, 10 * MAX_NESTING_DEPTH))
    closed = draw(st.integers(0, depth)) if draw(st.booleans()) else depth  # sometimes unbalanced
    return before + opening * depth + core + closing * closed + after


NUMBER_PLACES = [
    HEADER + "let a = N\n",
    HEADER + "let a = -N\n",
    HEADER + "lora d {\n    on q_proj\n    rank N\n}\n",
    HEADER + "lora d {\n    on q_proj\n    dropout N\n}\n",
    HEADER + "lora d {\n    on layers[N].q_proj\n}\n",
    HEADER + "lora d {\n    on layers[1:N].q_proj\n}\n",
    HEADER + DELTA + "task t = N * d\n",
    "adaptlang N\n",
]


@st.composite
def numbers(draw) -> str:
    digits = st.text("0123456789", min_size=1, max_size=draw(st.sampled_from([3, 30, 400, 6000])))
    text = draw(digits)
    if draw(st.booleans()):
        text += "." + draw(digits)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["e", "E", "e-", "e+"])) + draw(digits)
    if draw(st.booleans()):
        text += "%"
    return draw(st.sampled_from(NUMBER_PLACES)).replace("N", text)


PIECES = ["{", "}", "(", ")", "[", "]", "-", "+", "*", "/", ",", ".", ":", "=", "%", "|", ";", "\n", " ", "#",
          '"', '\\', "1", "1e400", "9" * 50, "q_proj", "**", "@q", "let", "lora d", "task", "frozen(", "for",
          "is", "except", "on", "rank", "use", "model", "quantize nf4", "adaptlang 1\n"]
ODD = ["\x00", "\x07", "\x08", "\x0b", "\x0c", "\r", "\x1b[2J", "\x1b]0;t\x07", "\x7f", "\x85", "\u00a0",
       "\u2028", "\u2029", "\u202e", "\u200b", "\ufeff", "\ud7ff", "\U0001F600", "\u2013", "\u201c", "é", "ǅ"]


@st.composite
def odd_text(draw) -> str:
    parts = draw(st.lists(st.sampled_from(PIECES + ODD), max_size=60))
    return HEADER + "".join(parts)


@st.composite
def repeated(draw) -> str:
    # Flat arithmetic stays under a few hundred terms: evaluating it is spec/values.py's, and a
    # left-deep chain of thousands recurses there (see test_hostile_nesting.py).
    piece = draw(st.sampled_from([
        "let a = 1\n", "lora d {\n", "}\n", "{", "(", "-", "\n", ";", "# \x1b[2J\n", '"', "\\\"", "1 + ",
        "q_proj, ", "[0]", ".x", "for q ", "frozen(", "\x00",
    ]))
    count = draw(st.sampled_from([10, 101, 250, 2000, 20_000]))
    if piece in ("1 + ", "(", "-", "frozen("):
        count = min(count, 250)
    before = draw(st.sampled_from([HEADER, HEADER + "let a = ", HEADER + "lora d {\n    on ",
                                   HEADER + DELTA + "task t = "]))
    return before + piece * count + draw(st.sampled_from(["1\n", "q_proj\n}\n", "d\n", ""]))


def check(text: str) -> None:
    """The property: success, or an AdaptError that names a place or an object."""
    for run in (load_spec, format_text):
        try:
            run(text)
        except AdaptError as exc:
            assert exc.diagnostics, exc
            diag = exc.diagnostics[0]
            assert diag.span is not None or diag.obj is not None, diag
            assert exc.exit_code == 1
            if diag.span is not None:
                assert 1 <= diag.span.line <= text.count("\n") + 2, diag
            exc.render()


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(nested())
def test_fuzz_nesting(text):
    check(text)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(numbers())
def test_fuzz_numbers(text):
    check(text)


@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(odd_text())
def test_fuzz_odd_characters(text):
    check(text)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(repeated())
def test_fuzz_repetition(text):
    check(text)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.one_of(
    st.lists(st.sampled_from(list("{}[]*.,@:-/ |0") + ["q", " is ", " except ", "\x00", "\u202e"]),
             max_size=40).map("".join),
    st.integers(0, 3 * MAX_NESTING_DEPTH).map(lambda n: "{" * n + "q" + "}" * n),
))
def test_fuzz_selector_option(text):
    try:
        parse_selector(text)
    except AdaptError as exc:
        assert exc.diagnostics[0].span is not None
