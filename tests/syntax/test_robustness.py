"""Mangled specs never crash the front end: every failure is a located AdaptError in words."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adaptlang.errors import AdaptError
from adaptlang.spec import load_spec
from adaptlang.syntax.format import format_text

from .conftest import SPECS

SOURCES = [p.read_text(encoding="utf-8") for p in SPECS]
PIECES = list('{}[]()=*+-/.,;:@#"\'%|\n\t x0_') + ["for", "is", "except", "frozen(", "task", "let", "lora",
                                                   "**", "..", "1e", "adaptlang 1\n", "\u2013"]


@st.composite
def mangled(draw) -> str:
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:pos] + text[pos + draw(st.integers(1, 6)):]
        else:
            text = text[:pos] + draw(st.sampled_from(PIECES)) + text[pos:]
    return text


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(mangled())
def test_mangled_specs_fail_cleanly_or_round_trip(text):
    try:
        spec = load_spec(text)
    except AdaptError as exc:
        diag = exc.diagnostics[0]
        assert diag.span is not None and 1 <= diag.span.line <= text.count("\n") + 1
        rendered = exc.render()
        assert ": error: " in rendered and "^" in rendered
        # The fallback "unexpected X; expected A, B or C" is for states no rule knows: none here.
        assert not (diag.message.startswith("unexpected") and "; expected" in diag.message), rendered
        return
    once = format_text(text)
    assert format_text(once) == once
    assert load_spec(once).canonical() == spec.canonical()
