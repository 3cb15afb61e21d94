"""Syntax errors: each realistic mistake gives `file:line:col: error:`, a caret and words."""

from __future__ import annotations

import pytest
from lark.exceptions import UnexpectedInput

from adaptlang.errors import SpecError
from adaptlang.syntax.error_examples import EXAMPLES
from adaptlang.syntax.parser import get_parser, parse_selector, parse_text

H = "adaptlang 1\n"


def block(*lines: str, head: str = "lora attn") -> str:
    """A spec with one block whose body is ``lines`` (the block opens on line 2, column 11)."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"{H}{head} {{\n{body}}}\n"


# (id, source, line, col, message fragment, hint fragment)
CASES = [
    ("missing header", "lora attn {\n    on q_proj\n}\n", 1, 1,
     "missing `adaptlang 1` header", "start the spec with the line `adaptlang 1`"),
    ("header not first", "model llama\nadaptlang 1\n", 2, 1,
     "header must be the first statement", "move this line to the top"),
    ("header twice", f"{H}adaptlang 1\n", 2, 1, "header is given twice", "remove this line"),
    ("version not whole", "adaptlang 1.5\n", 1, 11, "the language version is a whole number", "adaptlang 1"),
    ("header without version", "adaptlang\n", 1, 10, "expected the language version", "adaptlang 1"),
    ("unclosed block at end", block("on q_proj", "rank 8")[:-2], 4, 11,
     "expected '}' to close 'lora attn' opened at 2:11", "add '}'"),
    ("unclosed block before task", f"{H}lora attn {{\n    on q_proj\n\ntask t = attn\n", 5, 1,
     "expected '}' to close 'lora attn' opened at 2:11", "before the next statement"),
    ("unclosed block before block", f"{H}lora a {{\n    on x\nlora b {{\n    on y\n}}\n", 4, 1,
     "expected '}' to close 'lora a' opened at 2:8", None),
    ("unmatched brace", block("on q_proj") + "}\n", 5, 1, "unmatched '}'", "remove it"),
    ("unterminated string", block('init text "Answer the question:', head="prompt p"), 3, 15,
     "unterminated string", "close it with '\"'"),
    ("stray character", block("on q_proj", "rank 8$"), 4, 11, "stray character '$'", None),
    ("single quotes", block("init text 'hi'", head="prompt p"), 3, 15,
     "strings are written in double quotes", None),
    ("equals in property", block("on q_proj", "rank = 8"), 4, 10,
     "properties are written `KEY VALUE` without '='", "write `rank 8`"),
    ("two properties on a line", block("on q_proj", "rank 8 alpha 16"), 4, 12,
     "one property per line", "put `alpha ...` on its own line"),
    ("missing value", block("on q_proj", "rank"), 4, 9, "missing value for `rank`", None),
    ("missing selector", block("on"), 3, 7, "missing selector after `on`", None),
    ("selector on a value key", block("onn layers[*].q_proj"), 3, 15,
     "`onn` takes a value, not a selector", "did you mean 'on'?"),
    ("slice with four parts", block("on layers[1:2:3:4]"), 3, 20,
     "a slice has at most three parts", "[0:8:2]"),
    ("empty alternative", block("on layers[*].{q_proj,}"), 3, 26, "empty alternative in '{...}'", None),
    ("empty segment", block("on layers..q_proj"), 3, 15, "empty path segment '..'", "`**`"),
    ("trailing dot", block("on layers."), 3, 15, "a selector cannot end with '.'", None),
    ("empty index", block("on layers[]"), 3, 15, "empty index '[]'", "[*]"),
    ("bad index", block("on layers[first]"), 3, 15, "expected an index, a slice or '*'", None),
    ("unclosed index", block("on layers[0"), 3, 16, "expected ',' or ']'", None),
    ("unclosed alternation", block("on {q_proj, v_proj"), 3, 23, "expected ',' or '}' in '{...}'", None),
    ("dash in segment", block("on q-proj"), 3, 9, "'-' cannot appear in a path segment", None),
    ("is without class", block("on q_proj is"), 3, 17, "expected a class name after 'is'", None),
    ("role without name", block("on @"), 3, 8, "a role is written `@NAME`", None),
    ("let without equals", f"{H}let r 8\n", 2, 7, "expected '=' after `let r`", "let r = VALUE"),
    ("incomplete arithmetic", f"{H}let r = 2 *\n", 2, 12, "expected a number, a name or '('", None),
    ("unclosed parenthesis", f"{H}let r = (8 + 2\n", 2, 15, "expected ')' to close '('", None),
    ("use without quotes", f"{H}use other.adapt\n", 2, 5, "`use` takes a quoted path", 'use "other.adapt"'),
    ("delta without name", f"{H}lora {{\n    on x\n}}\n", 2, 6, "expected a name after `lora`", None),
    ("block without brace", f"{H}lora attn\n", 2, 10, "expected '{' after `lora attn`", None),
    ("property outside block", f"{H}rank 8\n", 2, 1, "property `rank` outside a block", None),
    ("task without equals", f"{H}task t attn\n", 2, 8, "expected '=' after `task t`", None),
    ("task trailing plus", f"{H}task t = attn +\n", 2, 16, "expected a delta or task name after '+'", None),
    ("weight after operand", f"{H}task t = attn * 0.5\n", 2, 17, "expected a delta or task name after '*'",
     "a weight goes before what it scales"),
    ("frozen without parens", f"{H}task t = frozen attn\n", 2, 17, "`frozen` takes parentheses", "frozen(a)"),
    ("task minus", f"{H}task t = a - b\n", 2, 12, "tasks combine with '+' only", None),
    ("task juxtaposition", f"{H}task t = a b\n", 2, 12, "expected '+' or end of line after 'a'", None),
    ("two statements on a line", f"{H}model llama extra\n", 2, 13, "after the end of the statement", None),
    ("smart quotes", block("init text \u201chi\u201d", head="prompt p"), 3, 15, "stray character", "plain double"),
]


@pytest.mark.parametrize("source, line, col, message, hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_syntax_error_is_located_and_explained(source, line, col, message, hint, expect_rendered):
    with pytest.raises(SpecError) as err:
        parse_text(source, "specs/bad.adapt")
    assert len(err.value.diagnostics) == 1
    expect_rendered(err.value.render(), "specs/bad.adapt", line, col, message, hint)


def test_there_are_many_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("text, col, message", [
    ("layers[*].{q_proj,", 19, "expected ',' or '}'"),
    ("a..b", 3, "empty path segment"),
    ("x[1:2:3:4]", 8, "a slice has at most three parts"),
    ("{a,}", 4, "empty alternative"),
    ("x y", 3, "unexpected 'y' in a selector"),
    ("x.", 3, "a selector cannot end with '.'"),
])
def test_selector_alone_errors(text, col, message, expect_rendered):
    with pytest.raises(SpecError) as err:
        parse_selector(text)
    expect_rendered(err.value.render(), "<selector>", 1, col, message)


def test_every_error_example_fails_to_parse():
    # An example that parses would silently never match: the table must stay honest.
    parser = get_parser()
    for label, snippets, start in EXAMPLES:
        for snippet in snippets:
            with pytest.raises(UnexpectedInput):
                parser.parse(snippet, start=start)


def test_caret_spans_the_whole_token():
    with pytest.raises(SpecError) as err:
        parse_text(f"{H}use other.adapt\n", "x.adapt")
    assert err.value.render().splitlines()[2] == "        " + "^" * len("other.adapt")


def test_no_lark_exception_escapes_for_odd_input():
    for text in ["\x00", "adaptlang 1\n\x7f", "adaptlang 1\n" + "(" * 50, "adaptlang 1\n}}}", "adaptlang 1\n\"",
                 "adaptlang 1\nlora a { on x.{a, {b, {c}}} }\n", "adaptlang 1\ntask t = ((((a\n"]:
        try:
            parse_text(text)
        except SpecError as exc:
            assert exc.diagnostics[0].span is not None


def test_a_bad_token_after_a_key_is_not_called_an_equals_sign():
    # The LALR state after `on` is the same for '=' and for '(': only '=' gets the '=' hint.
    from adaptlang.errors import SpecError
    from adaptlang.syntax.parser import parse_text

    with pytest.raises(SpecError) as err:
        parse_text("adaptlang 1\nlora a {\n    on (a)\n}\n", "x.adapt")
    assert "x.adapt:3:8: error: expected a selector after `on`, found '('" in str(err.value)
