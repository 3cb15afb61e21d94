"""Property-based: formatting a spec never changes the plan it compiles to.

Random specs that bind to a real model (the ``tiny-llama`` preset: every
selector below matches there), laid out at random by the syntax tests'
layout strategy (whitespace, comments, blank lines, ``;``, brace placement,
statement order), are compiled before and after ``format_text``: the plans'
``plan_sha256`` must be equal. The syntax tests show the same for the spec's
meaning on specs that need not bind; this is the end-to-end version.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptlang.plan.compiler import compile_plan
from adaptlang.syntax.format import format_text
from tests.syntax.spec_strategies import layout, number

_TOKEN = re.compile(r"[A-Za-z_*@][A-Za-z0-9_*]*|-?\d+|\S")


def tokens(text: str) -> list[str]:
    """Splits selector or value text into the tokens the layout strategy spaces out."""
    return _TOKEN.findall(text)


#: Placement selectors per kind that bind on tiny-llama (2 layers, Llama names and roles).
PLACES = {
    "lora": ["layers[*].self_attn.{q_proj, v_proj}", "layers[-1:].mlp.** is Linear", "@layers[0].@q",
             "**.o_proj", "/model.layers[::2].self_attn.k_proj"],
    "ia3": ["layers[*].self_attn.{k_proj, v_proj}", "mlp.down_proj", "@v"],
    "adapter": ["layers[*].mlp", "layers[-1].self_attn.o_proj"],
    "tune": ["lm_head.weight", "norm", "**.input_layernorm.weight", "layers[0].mlp.up_proj"],
    "sparse": ["layers[*].mlp.down_proj", "@layers[-1].@q"],
}
WEIGHTABLE = ("lora", "ia3", "adapter", "sparse")


@st.composite
def delta_block(draw, kind: str, name: str) -> tuple[list[str], list[list[str]]]:
    """One delta block that binds: placement, a few properties, maybe a ``for`` override."""
    place = tokens(draw(st.sampled_from(PLACES.get(kind, [""]))))
    props: list[list[str]] = []
    if kind == "lora":
        props += [["on", *place], ["rank", str(draw(st.integers(1, 8)))]]
        props += draw(st.lists(st.sampled_from([["alpha", "16"], ["dropout", "0.1"], ["variant", "dora"],
                                                ["variant", "rslora"], ["bias", "true"], ["init", "gaussian"]]),
                               max_size=2, unique_by=lambda p: p[0]))
        if draw(st.booleans()):
            props.append(["rank", str(draw(st.integers(1, 8))), "for", *tokens(draw(st.sampled_from(["**", "*_proj"])))])
    elif kind == "ia3":
        props.append(["on", *place])
    elif kind == "adapter":
        props += [[draw(st.sampled_from(["after", "parallel"])), *place],
                  draw(st.sampled_from([["size", str(draw(st.integers(1, 8)))], ["reduction", "4"]])),
                  ["act", draw(st.sampled_from(["relu", "gelu", "silu", "tanh"]))]]
    elif kind == "prompt":
        props += [["tokens", str(draw(st.integers(1, 6)))], ["init", draw(st.sampled_from(["vocab", "random"]))]]
    elif kind == "tune":
        props.append(["params", *place])
    else:
        props += [["on", *place], ["density", draw(st.sampled_from(["0.5%", "10%", "0.25"]))],
                  ["select", draw(st.sampled_from(["magnitude", "random"]))]]
    return [kind, name], draw(st.permutations(props))


@st.composite
def bindable_specs(draw) -> str:
    """A random spec that compiles against tiny-llama, in a random layout."""
    kinds = draw(st.lists(st.sampled_from(sorted(PLACES) + ["prompt"]), min_size=1, max_size=4))
    # One prompt and one tune per spec: two of either would clash inside a task.
    kinds = [k for i, k in enumerate(kinds) if k not in ("prompt", "tune") or k not in kinds[:i]]
    deltas = [(f"d{i}", kind) for i, kind in enumerate(kinds)]
    stmts: list[tuple[str, object]] = [("block", draw(delta_block(kind, name))) for name, kind in deltas]
    for t in range(draw(st.integers(0, 3))):
        used = draw(st.lists(st.sampled_from(deltas), min_size=1, max_size=len(deltas), unique=True))
        expr: list[str] = []
        for i, (name, kind) in enumerate(used):
            term = [name]
            if kind in WEIGHTABLE and draw(st.booleans()):
                term = [draw(number(0.1, 2)), "*", name]
            elif draw(st.integers(0, 3)) == 0:
                term = ["frozen", "(", name, ")"]
            expr += (["+"] if i else []) + term
        stmts.append(("line", ["task", f"t{t}", "=", *expr]))
    return draw(layout([("line", ["adaptlang", "1"])] + draw(st.permutations(stmts))))


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bindable_specs())
def test_formatting_never_changes_the_plan_hash(source):
    formatted = format_text(source)
    assert format_text(formatted) == formatted
    assert compile_plan(formatted, "tiny-llama").sha256 == compile_plan(source, "tiny-llama").sha256
