"""Semantic errors: each mistake is located, shown with a caret and explained, all at once."""

from __future__ import annotations

import pytest

from adaptlang.errors import SpecError
from adaptlang.syntax import ast
from adaptlang.spec.values import PROPERTY_TYPES

H = "adaptlang 1\n"


def lora(*lines: str, name: str = "attn") -> str:
    """A lora block on lines 2.. whose properties start on line 3 (after `on q_proj`, line 3)."""
    body = "".join(f"    {line}\n" for line in ("on q_proj", *lines))
    return f"lora {name} {{\n{body}}}\n"


PROMPT = "prompt instruct {\n    tokens 20\n}\n"

# (id, source, line, col, message fragment, hint fragment)
CASES = [
    ("unknown version", "adaptlang 2\n" + lora(), 1, 1, "unknown language version 2", "adaptlang 1"),
    ("unknown kind", H + "lroa attn {\n    on q_proj\n}\n", 2, 1, "unknown delta kind 'lroa'",
     "did you mean 'lora'?"),
    ("unknown property", H + lora("rnak 8"), 4, 5, "unknown property 'rnak' for lora", "did you mean 'rank'?"),
    ("property of another kind", H + lora("size 8"), 4, 5, "unknown property 'size' for lora", None),
    ("placement key of another kind", H + "tune t {\n    params lm_head\n    on lm_head\n}\n", 4, 5,
     "unknown property 'on' for tune", "tune takes: params"),
    ("missing on", H + "lora attn {\n    rank 8\n}\n", 2, 1, "lora 'attn' needs `on`", None),
    ("missing tokens", H + "prompt p {\n    init vocab\n}\n", 2, 1, "prompt 'p' needs `tokens`", None),
    ("missing params", H + "tune t {\n}\n", 2, 1, "tune 't' needs `params`", None),
    ("adapter without placement", H + "adapter b {\n    size 64\n}\n", 2, 1,
     "adapter 'b' needs a placement: `after`, `before` or `parallel`", None),
    ("adapter with two placements", H + "adapter b {\n    after mlp\n    before mlp\n    size 8\n}\n", 4, 5,
     "has two placements, `after` and `before`", None),
    ("adapter without width", H + "adapter b {\n    after mlp\n}\n", 2, 1, "needs a width", "size 64"),
    ("size and reduction", H + "adapter b {\n    after mlp\n    size 64\n    reduction 16\n}\n", 5, 5,
     "`size` and `reduction` both set the adapter's width", None),
    ("property twice", H + lora("rank 8", "rank 16"), 5, 5, "`rank` is given twice", "for SELECTOR"),
    ("override of a placement", H + lora("on k_proj for layers[0].**"), 4, 5,
     "`on` cannot be set per site", "rank, alpha"),
    ("override on a prompt", H + "prompt p {\n    tokens 20\n    tokens 4 for x\n}\n", 4, 5,
     "`tokens` cannot be set per site", "prompt has no per-site properties"),
    ("rank not whole", H + lora("rank 8.5"), 4, 10, "`rank` expects a positive whole number, found 8.5",
     "round it"),
    ("rank zero", H + lora("rank 0"), 4, 10, "`rank` expects a positive whole number, found 0", None),
    ("alpha not positive", H + lora("alpha -2"), 4, 11, "`alpha` expects a number > 0, found -2", None),
    ("dropout out of range", H + lora("dropout 1.5"), 4, 13, "`dropout` expects a probability in [0, 1)", None),
    ("density too big", H + "sparse s {\n    on w\n    density 5\n}\n", 4, 13,
     "`density` expects a fraction in (0, 1]", "5%"),
    ("percent for a rank", H + lora("rank 8%"), 4, 10, "found a percentage", None),
    ("string for a number", H + lora('rank "8"'), 4, 10, "found a string", None),
    ("bad enum value", H + lora("init kaiming_uniform"), 4, 10, "`init` expects 'kaiming', 'gaussian' or 'zeros'",
     "did you mean 'kaiming'?"),
    ("unknown activation", H + "adapter b {\n    after mlp\n    size 8\n    act gelo\n}\n", 5, 9,
     "`act` expects 'relu', 'gelu', 'silu' or 'tanh', found 'gelo'", "did you mean 'gelu'?"),
    ("bad variant", H + lora("variant dorra"), 4, 13, "`variant` expects", "did you mean 'dora'?"),
    ("boolean typo", H + lora("bias True"), 4, 10, "`bias` expects 'true' or 'false'", "did you mean 'true'?"),
    ("prompt init without tag", H + 'prompt p {\n    tokens 4\n    init "Answer:"\n}\n', 4, 10,
     "text init is written `init text", 'init text "Answer:"'),
    ("prompt init typo", H + "prompt p {\n    tokens 4\n    init vocabulary\n}\n", 4, 10,
     "`init` expects `text \"...\"`, vocab or random", "did you mean 'vocab'?"),
    ("unknown quantize format", H + "quantize nf5 {\n    on x\n}\n", 2, 10, "unknown quantize format 'nf5'",
     "did you mean 'nf4'?"),
    ("quantize without on", H + "quantize nf4 {\n    block 64\n}\n", 2, 1, "quantize nf4 needs `on`", None),
    ("undefined constant", H + "let r = 8\n" + lora("rank rr"), 5, 10, "unknown constant 'rr'",
     "did you mean 'r'?"),
    ("division by zero", H + "let r = 8 / (2 - 2)\n", 2, 13, "division by zero", "is 0 here"),
    ("constant cycle", H + "let a = b + 1\nlet b = a\n", 2, 5, "constant 'a' is defined in terms of itself: a -> b -> a",
     None),
    ("constant twice", H + "let r = 8\nlet r = 16\n", 3, 5, "constant 'r' is defined twice", None),
    ("duplicate delta", H + lora() + lora(), 5, 6, "'attn' is defined twice: here and at <string>:2:6",
     "share one namespace"),
    ("task clashes with delta", H + lora() + "task attn = attn + attn\n", 5, 6, "'attn' is defined twice", None),
    ("typo of a delta in a task", H + lora() + "task t = atn\n", 5, 10, "unknown delta or task 'atn'",
     "did you mean 'attn'?"),
    ("weight on a prompt", H + PROMPT + "task t = 0.5 * instruct\n", 5, 10,
     "a weight on a prompt delta is an error: 'instruct' has weight 0.5", "remove the weight"),
    ("prompt used twice", H + PROMPT + "task t = instruct + instruct\n", 5, 10,
     "a weight on a prompt delta is an error: 'instruct' has weight 2", None),
    ("weight on a tune", H + "tune head {\n    params lm_head\n}\ntask t = 2 * head\n", 5, 10,
     "a weight on a tune delta is an error", None),
    ("frozen and trained", H + lora() + "task t = frozen(attn) + attn\n", 5, 25,
     "'attn' is both frozen and trained in task 't'", None),
    ("task cycle", H + lora() + "task t = attn + u\ntask u = t\n", 6, 10, "task 't' refers to itself: t -> u -> t",
     None),
    ("task refers to itself", H + lora() + "task t = attn + t\n", 5, 17, "task 't' refers to itself: t -> t", None),
    ("negative weight", H + lora() + "task t = -0.5 * attn\n", 5, 10, "a task weight must be a positive number", None),
    ("model twice", H + "model llama\nmodel gpt2\n", 3, 1, "`model` is given twice", None),
]


@pytest.mark.parametrize("source, line, col, message, hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_semantic_error_is_located_and_explained(source, line, col, message, hint, spec_error, expect_rendered):
    err = spec_error(source)
    assert isinstance(err, SpecError) and err.exit_code == 1
    assert len(err.diagnostics) == 1, err.render()
    expect_rendered(err.render(), "<string>", line, col, message, hint)


def test_there_are_many_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40


def test_all_problems_are_reported_at_once_in_file_order(spec_error):
    source = H + "task t = atn\n" + "lroa x {\n    on q\n}\n" + lora("rnak 8", "dropout 2") + "let r = 1 / 0\n"
    err = spec_error(source)
    lines = [d.span.line for d in err.diagnostics]
    assert lines == sorted(lines) and len(lines) == 5, err.render()
    assert all(d.source_line is not None for d in err.diagnostics)


def test_a_broken_constant_is_reported_once(spec_error):
    err = spec_error(H + "let r = 8 / 0\nlet a = r * 2\n" + lora("rank r", "alpha a"))
    assert [d.message for d in err.diagnostics] == ["division by zero"]


def test_a_task_using_a_broken_task_stays_quiet(spec_error):
    err = spec_error(H + lora() + "task t = atn\ntask u = t + attn\n")
    assert len(err.diagnostics) == 1 and "'atn'" in err.diagnostics[0].message


def test_schema_keys_match_the_syntax_layer():
    assert {k: tuple(v) for k, v in PROPERTY_TYPES.items()} == ast.KIND_PROPERTIES
