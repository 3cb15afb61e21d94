"""Lowering valid specs: values, defaults, constants, overrides and the path/text rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptlang.errors import UsageError
from adaptlang.spec import AdapterDelta, LoraDelta, PromptDelta, TuneDelta, load_spec
from adaptlang.syntax.render import render_selector

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.adapt"))
H = "adaptlang 1\n"


def terms(spec, task):
    return [(t.delta, t.weight, t.frozen) for t in spec.tasks[task].terms]


def test_multitask_deltas():
    spec = load_spec(REPO / "specs" / "multitask.adapt")
    assert spec.version == 1 and spec.model == "llama"
    assert list(spec.deltas) == ["attn", "mlp", "bottleneck", "instruct", "head"]
    attn = spec.deltas["attn"]
    assert isinstance(attn, LoraDelta)
    assert (attn.rank, attn.alpha, attn.dropout) == (8, 16.0, 0.05)  # alpha = 2 * r with r = 8
    assert render_selector(attn.on) == "layers[*].self_attn.{q_proj, v_proj}"
    mlp = spec.deltas["mlp"]
    assert mlp.rank == 16 and mlp.alpha is None
    (override,) = mlp.overrides
    assert (override.key, override.value, render_selector(override.selector)) == ("rank", 32, "layers[-2:].**")
    assert override.span.line == 17
    bottleneck = spec.deltas["bottleneck"]
    assert isinstance(bottleneck, AdapterDelta)
    assert (bottleneck.placement, bottleneck.size, bottleneck.reduction, bottleneck.act) == ("after", 64, None, "gelu")
    instruct = spec.deltas["instruct"]
    assert isinstance(instruct, PromptDelta)
    assert (instruct.tokens, instruct.init.kind, instruct.init.text) == (20, "text", "Answer the question:")
    assert isinstance(spec.deltas["head"], TuneDelta)
    assert render_selector(spec.deltas["head"].params) == "lm_head.weight"
    assert spec.constants == {"r": 8}
    assert spec.path.endswith("multitask.adapt") and spec.path in spec.sources


def test_multitask_tasks_flatten_as_the_contract_says():
    spec = load_spec(REPO / "specs" / "multitask.adapt")
    assert list(spec.tasks) == ["sentiment", "qa", "both", "qa_v2"]
    assert terms(spec, "sentiment") == [("attn", 1.0, False), ("bottleneck", 1.0, False)]
    assert terms(spec, "qa") == [("attn", 1.0, False), ("mlp", 1.0, False)]
    # both = 0.5 * (attn + bottleneck) + 0.5 * (attn + mlp): attn 0.5 + 0.5 = 1.0.
    assert terms(spec, "both") == [("attn", 1.0, False), ("bottleneck", 0.5, False), ("mlp", 0.5, False)]
    assert terms(spec, "qa_v2") == [("attn", 1.0, True), ("mlp", 1.0, True), ("head", 1.0, False),
                                    ("instruct", 1.0, False)]
    assert spec.tasks["both"].span.line == 37


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_repository_spec_lowers(path):
    spec = load_spec(str(path))
    assert spec.deltas and spec.tasks


def test_defaults_of_every_kind():
    spec = load_spec(H + "lora l { on q }\nia3 i { on k }\nadapter a { after mlp\n size 8 }\n"
                     "prompt p { tokens 4 }\ntune t { params lm_head }\nsparse s { on w }\n"
                     "quantize nf4 { on **.*_proj }\n")
    l, i, a, p, s = (spec.deltas[n] for n in "liaps")
    assert (l.rank, l.alpha, l.dropout, l.init, l.variant, l.bias) == (8, None, 0.0, "kaiming", "lora", False)
    assert (i.init, i.feedforward) == ("ones", False)
    assert (a.act, a.dropout, a.scale, a.residual) == ("relu", 0.0, 1.0, True)
    assert (p.init.kind, p.init.text) == ("random", None)
    assert (s.density, s.select, s.seed) == (0.01, "magnitude", 0)
    (q,) = spec.quantize
    assert (q.format, q.block, q.double, q.compute) == ("nf4", 64, True, "float32")
    default = spec.tasks["default"]
    assert default.implicit and [t.delta for t in default.terms] == ["l", "i", "a", "p", "t", "s"]


def test_every_property_value():
    spec = load_spec(H + "let r = 16\nlora l {\n on q\n rank r / 2\n alpha 2 * r\n dropout 5%\n init gaussian\n"
                     " variant rslora\n bias true\n}\nadapter a {\n before @mlp\n reduction 16\n act silu\n dropout 0.1\n"
                     " scale 0.5\n residual false\n size 32 for layers[0].mlp\n}\n"
                     "sparse s {\n on w\n density 0.5%\n select random\n seed 3\n density 0.02 for x\n}\n"
                     "ia3 i {\n on k\n feedforward true for down_proj\n}\nprompt p {\n tokens 10\n init vocab\n}\n"
                     "quantize int8 {\n on x\n block 128\n double false\n compute bfloat16\n block 32 for y\n}\n")
    l = spec.deltas["l"]
    # 16 / 2 is 8.0, a whole number: a rank accepts it as the int 8.
    assert (l.rank, l.alpha, l.dropout, l.init, l.variant, l.bias) == (8, 32.0, 0.05, "gaussian", "rslora", True)
    assert isinstance(l.rank, int)
    a = spec.deltas["a"]
    assert (a.placement, a.size, a.reduction, a.act, a.dropout, a.scale, a.residual) == (
        "before", None, 16.0, "silu", 0.1, 0.5, False)
    assert [(o.key, o.value) for o in a.overrides] == [("size", 32)]
    s = spec.deltas["s"]
    assert (s.density, s.select, s.seed) == (0.005, "random", 3)  # 0.5% is 0.005
    assert [(o.key, o.value) for o in s.overrides] == [("density", 0.02)]
    assert [(o.key, o.value) for o in spec.deltas["i"].overrides] == [("feedforward", True)]
    assert spec.deltas["p"].init.kind == "vocab"
    (q,) = spec.quantize
    assert (q.format, q.block, q.double, q.compute) == ("int8", 128, False, "bfloat16")
    assert [(o.key, o.value) for o in q.overrides] == [("block", 32)]


def test_constants_in_any_order_and_overridden():
    source = H + "let alpha = 2 * r\nlet r = (4 + 4) * 1\nlora a { on q\n rank r\n alpha alpha }\n"
    spec = load_spec(source)
    assert (spec.deltas["a"].rank, spec.deltas["a"].alpha) == (8, 16.0)
    bigger = load_spec(source, constants={"r": 16})
    assert (bigger.deltas["a"].rank, bigger.deltas["a"].alpha) == (16, 32.0)
    assert bigger.constants == {"alpha": 32, "r": 16}


def test_unknown_override_is_a_usage_error_with_suggestion():
    with pytest.raises(UsageError) as err:
        load_spec(H + "let rank_base = 8\nlora a { on q }\n", constants={"rank_bas": 4})
    assert err.value.exit_code == 2
    assert "unknown constant 'rank_bas'" in err.value.render()
    assert "did you mean 'rank_base'?" in err.value.render()


def test_path_or_text(tmp_path, monkeypatch):
    text = H + "lora a { on q }\n"
    path = tmp_path / "x.adapt"
    path.write_text(text)
    assert load_spec(path).path == str(path)
    assert load_spec(str(path)).path == str(path)
    assert load_spec(text).path == "<string>"
    monkeypatch.chdir(tmp_path)
    assert load_spec("x.adapt").sources == {"x.adapt": text}
    with pytest.raises(UsageError) as err:
        load_spec("missing.adapt")
    assert "no such file" in err.value.render()
    with pytest.raises(UsageError):
        load_spec(42)


def test_canonical_ignores_layout_and_comments_but_not_meaning():
    a = load_spec(H + "lora a { on layers.* }\n")
    b = load_spec(H + "# c\nlora   a {\n    on layers . *   # d\n}\n")
    c = load_spec(H + "lora a { on layers.** }\n")
    assert a.canonical() == b.canonical()
    assert a.canonical() != c.canonical()  # `*` and `**` differ


def test_task_named_after_its_one_delta():
    spec = load_spec(REPO / "specs" / "bottleneck.adapt")
    assert terms(spec, "pfeiffer") == [("pfeiffer", 1.0, False)]
    assert terms(spec, "houlsby") == [("houlsby_attn", 1.0, False), ("houlsby_mlp", 1.0, False)]


def test_model_statement_forms():
    assert load_spec(H + 'model "my/dir"\nlora a { on q }\n').model == "my/dir"
    assert load_spec(H + "lora a { on q }\n").model is None
