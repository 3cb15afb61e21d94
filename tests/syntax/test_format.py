"""The formatter: canonical layout, comments kept, idempotent, meaning unchanged."""

from __future__ import annotations

import pytest

from adaptlang.errors import SpecError
from adaptlang.spec import load_spec
from adaptlang.syntax.format import format_text
from adaptlang.syntax.parser import parse_text

from .conftest import SPECS
from .test_parser import MULTITASK


def comment_texts(text: str) -> list[str]:
    return [c.text for c in parse_text(text).comments]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_specs_are_idempotent_and_keep_meaning(path):
    source = path.read_text(encoding="utf-8")
    once = format_text(source, str(path))
    assert format_text(once, str(path)) == once
    assert load_spec(once).canonical() == load_spec(source).canonical()
    assert comment_texts(once) == comment_texts(source)


def test_contract_example_is_a_fixed_point():
    assert format_text(MULTITASK) == MULTITASK


UGLY = """\
adaptlang 1
model   llama
let r=8
lora attn{
  on layers[*].self_attn.{q_proj,v_proj}
      rank r
}
task main=attn
"""

UGLY_FORMATTED = """\
adaptlang 1
model llama

let r = 8

lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}
    rank    r
}

task main = attn
"""


def test_ugly_spec_gets_the_canonical_layout():
    assert format_text(UGLY) == UGLY_FORMATTED


MESSY = """\
# top comment

adaptlang 1 # hdr
let alpha=2*(r+1)   # a
let r=8
# about attn


lora attn { on layers[*].self_attn.{q_proj,v_proj} # where
  rank r; alpha alpha
  # inside
  dropout 5%
  rank 4 for layers[0:8:2].** , /model.layers[-1].@mlp except **.down_proj is Linear|Conv1D }   # end
prompt p
{   # brace
 tokens 4 ; init text "hi \\"there\\""
}
task t=attn+p
task longer_name = 0.5*(attn)+frozen(p)  # t2
# eof comment
"""

MESSY_FORMATTED = """\
# top comment

adaptlang 1  # hdr

let alpha = 2 * (r + 1)   # a
let r     = 8

# about attn

lora attn {
    on      layers[*].self_attn.{q_proj, v_proj}  # where
    rank    r
    alpha   alpha
    # inside
    dropout 5%
    rank    4 for layers[0:8:2].**, /model.layers[-1].@mlp except **.down_proj is Linear | Conv1D   # end
}

prompt p {   # brace
    tokens  4
    init    text "hi \\"there\\""
}

task t           = attn + p
task longer_name = 0.5 * (attn) + frozen(p)  # t2
# eof comment
"""


def test_messy_spec_layout_comments_and_meaning():
    once = format_text(MESSY)
    assert once == MESSY_FORMATTED
    assert format_text(once) == once
    assert comment_texts(once) == comment_texts(MESSY)
    assert load_spec(once).canonical() == load_spec(MESSY).canonical()


def test_trailing_comment_keeps_its_column_when_code_still_fits():
    source = "adaptlang 1\nlet r=8               # the rank\n"
    assert format_text(source) == "adaptlang 1\n\nlet r = 8             # the rank\n"


def test_comment_continuation_lines_stay_aligned():
    source = ("adaptlang 1\nprompt p {\n    tokens 4\n    init vocab   # first line\n"
              "                 # second line\n}\n")
    out = format_text(source)
    first, second = out.splitlines()[4:6]
    assert first.index("#") == second.index("#")
    assert format_text(out) == out


def test_brace_on_the_next_line_keeps_both_comments_in_order():
    source = "adaptlang 1\nlora a  # about a\n{  # brace\n    on q\n}\n"
    out = format_text(source)
    assert out == "adaptlang 1\n\nlora a {  # about a\n          # brace\n    on      q\n}\n"
    assert format_text(out) == out
    assert comment_texts(out) == ["# about a", "# brace"]
    between = "adaptlang 1\nlora a  # about a\n# own line\n{  # brace\n    on q\n}\n"
    out = format_text(between)
    assert comment_texts(out) == ["# about a", "# own line", "# brace"]
    assert format_text(out) == out


def test_blank_lines_collapse_and_groups_separate():
    source = "adaptlang 1\n\n\n\nlet a = 1\nlet b = 2\n\n\n\nlet c = 3\ntask t = x\nlora x { on q }\n"
    assert format_text(source) == (
        "adaptlang 1\n\nlet a = 1\nlet b = 2\n\nlet c = 3\n\ntask t = x\n\nlora x {\n    on      q\n}\n")


def test_key_column_grows_for_long_keys():
    out = format_text("adaptlang 1\nia3 s {\n on x\n feedforward true for y\n}\n")
    assert "    on          x\n    feedforward true for y\n" in out


def test_empty_file_and_comment_only_file_are_errors():
    for text in ("", "# nothing here\n"):
        with pytest.raises(SpecError):
            format_text(text)


def test_syntax_error_raises_spec_error_with_location():
    with pytest.raises(SpecError) as err:
        format_text("adaptlang 1\nlora attn {\n    on q_proj\n    rank = 8\n", "bad.adapt")
    assert err.value.render().startswith("bad.adapt:4:10: error:")
