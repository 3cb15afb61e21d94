"""The parser: every form of LANGUAGE.md parses into the AST, with spans and comments."""

from __future__ import annotations

import pytest

from adaptlang.errors import Span, SpecError
from adaptlang.syntax import ast
from adaptlang.syntax.parser import parse_file, parse_selector, parse_text

from .conftest import REPO, SPECS

#: The whole spec of LANGUAGE.md ("A whole spec"), verbatim.
MULTITASK = """\
# specs/multitask.adapt
adaptlang 1                       # language version: first statement, required
model llama                       # default model; `adaptc compile --model X` overrides

let r = 8

lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}
    rank    r
    alpha   2 * r
    dropout 0.05
}

lora mlp {
    on      layers[-8:].mlp.** is Linear
    rank    16
    rank    32 for layers[-2:].**          # per-site override
}

adapter bottleneck {
    after   layers[*].mlp                  # after | before | parallel
    size    64                             # bottleneck width (with biases)
    act     gelu
}

prompt instruct {
    tokens  20
    init    text "Answer the question:"    # text "..." | vocab | random
}

tune head {
    params  lm_head.weight                 # re-train existing parameters
}

task sentiment = attn + bottleneck
task qa        = attn + mlp
task both      = 0.5 * sentiment + 0.5 * qa      # attn ends up at weight 1.0
task qa_v2     = frozen(qa) + head + instruct
"""


def test_specs_multitask_is_the_contract_example():
    assert (REPO / "specs" / "multitask.adapt").read_text(encoding="utf-8") == MULTITASK


def test_multitask_statements_in_order():
    module = parse_text(MULTITASK, "m.adapt")
    kinds = [type(s).__name__ for s in module.statements]
    assert kinds == ["Header", "ModelStmt", "Let"] + ["DeltaDecl"] * 5 + ["TaskDecl"] * 4
    assert [d.kind for d in module.statements if isinstance(d, ast.DeltaDecl)] == [
        "lora", "lora", "adapter", "prompt", "tune"]
    assert module.statements[1].name == "llama" and not module.statements[1].quoted
    assert len(module.comments) == 9
    assert module.comments[0].text == "# specs/multitask.adapt"
    assert module.comments[0].span == Span("m.adapt", 1, 1, 1, 24)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_repository_spec_parses(path):
    module = parse_file(path)
    assert isinstance(module.statements[0], ast.Header)
    assert module.file == str(path)


def test_spans_are_one_based_and_end_exclusive():
    module = parse_text(MULTITASK, "m.adapt")
    attn = module.statements[3]
    assert attn.kind_span == Span("m.adapt", 7, 1, 7, 5)
    assert attn.name_span == Span("m.adapt", 7, 6, 7, 10)
    assert attn.span == Span("m.adapt", 7, 1, 12, 2)
    on = attn.properties[0]
    assert on.key == "on" and on.key_span == Span("m.adapt", 8, 5, 8, 7)
    # `layers[*].self_attn.{q_proj, v_proj}` starts at column 13 and is 36 characters long.
    assert on.value.span == Span("m.adapt", 8, 13, 8, 49)
    alpha = attn.properties[2].value
    assert isinstance(alpha, ast.BinOp) and alpha.op == "*"
    assert alpha.span == Span("m.adapt", 10, 13, 10, 18)


def test_values_keep_their_spelling_and_type():
    module = parse_text('adaptlang 1\nsparse s {\n    density 0.5%\n    seed 7\n    select magnitude\n}\n'
                        'prompt p {\n    init text "a \\"b\\" \\\\ c"\n    tokens 1e1\n}\n')
    density, seed, select = (p.value for p in module.statements[1].properties)
    assert isinstance(density, ast.Percent) and density.value == 0.5 and density.fraction == 0.005
    assert isinstance(seed, ast.Number) and seed.value == 7 and isinstance(seed.value, int)
    assert isinstance(select, ast.Name) and select.name == "magnitude"
    init, tokens = (p.value for p in module.statements[2].properties)
    assert isinstance(init, ast.Tagged) and init.tag == "text" and init.value.value == 'a "b" \\ c'
    assert tokens.value == 10.0 and tokens.text == "1e1"


def test_arithmetic_precedence_and_grouping():
    let = parse_text("adaptlang 1\nlet x = -2 + 3 * (4 - 1) / 2\n").statements[1]
    top = let.value
    assert top.op == "+" and isinstance(top.left, ast.Neg)
    assert top.right.op == "/" and top.right.left.op == "*"
    assert isinstance(top.right.left.right, ast.Group)


def sel(text: str) -> ast.Selector:
    return parse_selector(text)


@pytest.mark.parametrize("text, expected", [
    ("q_proj", [ast.NamePat]),
    ("*_proj", [ast.NamePat]),
    ("*", [ast.AnyOne]),
    ("**", [ast.AnyMany]),
    ("layers[3]", [ast.NamePat, ast.Index]),
    ("{q_proj, v_proj}", [ast.Alt]),
    ("@q", [ast.Role]),
    ("@layers[-2:].@mlp", [ast.Role, ast.Index, ast.Role]),
    ("**.bias", [ast.AnyMany, ast.NamePat]),
    ("layers.0.mlp", [ast.NamePat, ast.NamePat, ast.NamePat]),
])
def test_selector_element_forms(text, expected):
    (path,) = sel(text).include
    assert [type(e) for e in path.elements] == expected


@pytest.mark.parametrize("text, items", [
    ("x[3]", [3]),
    ("x[-1]", [-1]),
    ("x[*]", ["*"]),
    ("x[0, 5, 9]", [0, 5, 9]),
    ("x[0:8]", [(0, 8, None)]),
    ("x[-4:]", [(-4, None, None)]),
    ("x[::2]", [(None, None, 2)]),
    ("x[1:-1:3]", [(1, -1, 3)]),
])
def test_index_forms(text, items):
    index = sel(text).include[0].elements[1]
    got = [(i.start, i.stop, i.step) if isinstance(i, ast.Slice) else i for i in index.items]
    assert got == items


def test_selector_union_except_classes_and_anchor():
    s = sel("/model.layers[0].**, @mlp is Linear | Conv1D except **.down_proj, lm_head")
    assert [p.anchored for p in s.include] == [True, False]
    assert s.include[1].classes == ["Linear", "Conv1D"]
    assert len(s.exclude) == 2 and s.exclude[1].elements[0].pattern == "lm_head"


def test_alternatives_may_be_dotted_paths():
    (alt,) = [e for e in sel("layers[*].{self_attn.k_proj, mlp.down_proj}").include[0].elements
              if isinstance(e, ast.Alt)]
    assert [[e.pattern for e in opt] for opt in alt.options] == [["self_attn", "k_proj"], ["mlp", "down_proj"]]


def test_placement_keys_take_selectors_other_keys_values():
    module = parse_text("adaptlang 1\nadapter a {\n    after layers[*].mlp\n    size 64\n"
                        "    size 32 for layers[0].mlp\n}\n")
    after, size, override = module.statements[1].properties
    assert isinstance(after.value, ast.Selector) and isinstance(size.value, ast.Number)
    assert isinstance(override.override, ast.Selector) and override.value.value == 32


def test_single_line_blocks_and_semicolons():
    a = parse_text("adaptlang 1\nlora a { on layers[*].self_attn.{q_proj, v_proj}\n rank 8 }").statements[1]
    b = parse_text("adaptlang 1\nlora a { on x; rank 8 }\n").statements[1]
    c = parse_text("adaptlang 1\nlora a\n{\n    on x\n    rank 8\n}\n").statements[1]
    for block in (a, b, c):
        assert [p.key for p in block.properties] == ["on", "rank"]


def test_task_expressions():
    module = parse_text("adaptlang 1\ntask t = 0.5 * (a + b) + frozen(c) + w * d + -1 * e\n")
    expr = module.statements[1].expr
    assert isinstance(expr, ast.TaskSum) and len(expr.terms) == 4
    scale, frozen, named, negative = expr.terms
    assert isinstance(scale.operand, ast.TaskGroup) and scale.weight.value == 0.5
    assert isinstance(frozen, ast.TaskFrozen) and frozen.operand.name == "c"
    assert isinstance(named.weight, ast.Name) and named.weight.name == "w"
    assert isinstance(negative.weight, ast.Neg)


def test_keywords_are_names_where_no_keyword_fits():
    module = parse_text("adaptlang 1\nlora model {\n    on task.for_x\n}\ntask frozen_task = model\n")
    assert module.statements[1].name == "model"
    assert [e.pattern for e in module.statements[1].properties[0].value.include[0].elements] == [
        "task", "for_x"]


def test_model_forms():
    quoted = parse_text('adaptlang 1\nmodel "path/to my/model"\n').statements[1]
    assert quoted.quoted and quoted.name == "path/to my/model"
    for ref in ("bert-base", "meta-llama/Llama-2-7b", "pkg.mod:factory"):
        assert parse_text(f"adaptlang 1\nmodel {ref}\n").statements[1].name == ref


def test_comments_are_collected_not_strings():
    module = parse_text('# a\nadaptlang 1 # b\nprompt p {\n    init text "not # a comment"  # c\n}\n')
    assert [c.text for c in module.comments] == ["# a", "# b", "# c"]
    assert module.statements[1].properties[0].value.value.value == "not # a comment"


def test_comments_before_header_and_blank_file_errors():
    assert parse_text("# only a comment\n\nadaptlang 1\n").statements[0].version == 1
    with pytest.raises(SpecError) as err:
        parse_text("")
    assert "missing `adaptlang 1` header" in err.value.render()


def test_parse_file_missing_is_usage_error(tmp_path):
    from adaptlang.errors import UsageError

    with pytest.raises(UsageError):
        parse_file(tmp_path / "nope.adapt")


def test_parse_selector_spans_point_into_the_text():
    s = parse_selector("layers[-2:].self_attn.{q_proj, v_proj}")
    assert s.span == Span("<selector>", 1, 1, 1, 39)
    assert s.include[0].elements[3].options[1][0].span == Span("<selector>", 1, 32, 1, 38)


def test_grammar_is_package_data():
    from importlib import resources

    text = resources.files("adaptlang.grammar").joinpath("adapt.lark").read_text(encoding="utf-8")
    assert "selector_start" in text and "task_expr" in text


def test_a_selector_may_start_with_an_index():
    # A plain nn.Sequential model's children are `0`, `1`, ...: `/[0:2]` picks the root's
    # first two, `[*]` any list's children. `a.[1]` is the same selector as `a[1]`.
    from adaptlang.syntax.parser import parse_selector
    from adaptlang.syntax.render import render_selector

    assert [type(e).__name__ for e in parse_selector("/[0:2]").include[0].elements] == ["Index"]
    assert render_selector(parse_selector("[*] is Linear")) == "[*] is Linear"
    assert parse_selector("a.[1]").include[0].elements[1].items == [1]
    assert render_selector(parse_selector("a.[1]")) == "a[1]"
