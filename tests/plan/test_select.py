"""The selector engine (``adaptlang.plan.select``): every form of LANGUAGE.md's table.

Expected matches are counted from the architecture: Llama-2-7B has 32 layers,
each with 4 attention projections and 3 MLP projections (all Linear).
"""

from __future__ import annotations

import time

import pytest

from adaptlang.errors import BindError
from adaptlang.plan.select import match_modules, match_params, match_targets, selector_matches_path


def layer_paths(leaf: str, layers) -> list[str]:
    return [f"model.layers.{i}.{leaf}" for i in layers]


# ----------------------------------------------------------------------
# LANGUAGE.md's examples on Llama.


def test_attention_projections_of_every_layer(sig, sel) -> None:
    found = match_modules(sig("llama"), sel("layers[*].self_attn.{q_proj, v_proj}"))
    assert len(found) == 64  # 32 layers x 2
    assert found[:3] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                         "model.layers.1.self_attn.q_proj"]


def test_linear_modules_of_the_last_eight_mlps(sig, sel) -> None:
    found = match_modules(sig("llama"), sel("layers[-8:].mlp.** is Linear"))
    # 8 layers x gate/up/down (the MLP itself and act_fn are not Linear).
    assert found == [f"model.layers.{i}.mlp.{p}" for i in range(24, 32)
                     for p in ("gate_proj", "up_proj", "down_proj")]


def test_lm_head_weight_is_one_parameter(sig, sel) -> None:
    assert match_params(sig("llama"), sel("lm_head.weight")) == [("lm_head", "weight")]
    assert match_targets(sig("llama"), sel("lm_head.weight")) == ([], [("lm_head", "weight")])


def test_every_bias_of_gpt2(sig, sel) -> None:
    found = match_params(sig("gpt2"), sel("**.bias"))
    # Per block: ln_1, c_attn, attn c_proj, ln_2, c_fc, mlp c_proj; then ln_f.
    assert len(found) == 12 * 6 + 1
    assert found[0] == ("transformer.h.0.ln_1", "bias") and found[-1] == ("transformer.ln_f", "bias")
    assert match_targets(sig("gpt2"), sel("**.bias"))[0] == []


@pytest.mark.parametrize("text, count, first", [
    ("q_proj", 32, "model.layers.0.self_attn.q_proj"),
    ("*_proj", 32 * 7, "model.layers.0.self_attn.q_proj"),
    ("layers[0].*", 4, "model.layers.0.self_attn"),  # self_attn, mlp, two norms
    ("layers[0].**", 13, "model.layers.0"),  # the layer itself, 2 blocks + 8 leaves, 2 norms
    ("{q_proj, v_proj}", 64, "model.layers.0.self_attn.q_proj"),
    ("layers[3]", 1, "model.layers.3"),
    ("layers[-1]", 1, "model.layers.31"),
    ("layers[0:8]", 8, "model.layers.0"),
    ("layers[-4:]", 4, "model.layers.28"),
    ("layers[::2]", 16, "model.layers.0"),
    ("layers[1::2]", 16, "model.layers.1"),
    ("layers[*]", 32, "model.layers.0"),
    ("layers[0, 5, 9]", 3, "model.layers.0"),
    ("layers[-1, 0]", 2, "model.layers.0"),  # model order, whatever the written order
    ("@q", 32, "model.layers.0.self_attn.q_proj"),
    ("@layers", 1, "model.layers"),
    ("@layers[-2:].@mlp", 2, "model.layers.30.mlp"),
    ("** is Linear", 32 * 7 + 1, "model.layers.0.self_attn.q_proj"),  # lm_head too
    ("*_proj is Linear | Conv1D", 32 * 7, "model.layers.0.self_attn.q_proj"),
    ("layers[*].self_attn.*_proj, lm_head except layers[0].**", 31 * 4 + 1,
     "model.layers.1.self_attn.q_proj"),
    ("/model.layers[0]", 1, "model.layers.0"),
    ("/lm_head", 1, "lm_head"),
    ("layers[*].{self_attn.k_proj, mlp.down_proj}", 64, "model.layers.0.self_attn.k_proj"),
    ("layers[-2:], norm, lm_head", 4, "model.layers.30"),
    ("**", 422, "model"),  # every module but the root
])
def test_selector_forms_on_llama(sig, sel, text: str, count: int, first: str) -> None:
    found = match_modules(sig("llama"), sel(text))
    assert len(found) == count
    assert found[0] == first
    order = list(sig("llama").modules)
    assert found == sorted(found, key=order.index)


def test_leading_index_picks_children_of_any_list(sig, sel_path, idx) -> None:
    # `[-1]` alone (built as AST: the surface syntax writes it after a name).
    assert match_modules(sig("llama"), sel_path(idx(-1))) == ["model.layers.31"]
    assert match_modules(sig("t5-base"), sel_path(idx(-1), "layer", idx(0))) == [
        "encoder.block.11.layer.0", "decoder.block.11.layer.0"]
    assert match_modules(sig("llama"), sel_path("layers", idx((None, None, 8)))) == [
        f"model.layers.{i}" for i in (0, 8, 16, 24)]


def test_roles_make_one_selector_portable(sig, sel) -> None:
    selector = sel("@layers[-2:].@mlp")
    assert match_modules(sig("llama"), selector) == ["model.layers.30.mlp", "model.layers.31.mlp"]
    assert match_modules(sig("gpt2"), selector) == ["transformer.h.10.mlp", "transformer.h.11.mlp"]
    assert match_modules(sig("tiny-gpt2"), selector) == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    # T5 has two stacks: the last two blocks of each.
    assert match_modules(sig("t5-base"), selector) == [
        "encoder.block.10.layer.1.DenseReluDense", "encoder.block.11.layer.1.DenseReluDense",
        "decoder.block.10.layer.2.DenseReluDense", "decoder.block.11.layer.2.DenseReluDense"]
    assert match_modules(sig("llama"), sel("@layers[0].@mlp.** is Linear")) == layer_paths(
        "mlp.gate_proj", [0]) + layer_paths("mlp.up_proj", [0]) + layer_paths("mlp.down_proj", [0])


def test_role_and_path_mix(sig, sel) -> None:
    assert match_modules(sig("llama"), sel("layers[0].@q")) == ["model.layers.0.self_attn.q_proj"]
    assert match_modules(sig("llama"), sel("@attn.q_proj")) == layer_paths("self_attn.q_proj", range(32))
    assert len(match_modules(sig("gpt2"), sel("@qkv is Conv1D"))) == 12


def test_class_filter_uses_the_whole_mro(sig, sel) -> None:
    assert len(match_modules(sig("gpt2"), sel("** is Linear | Conv1D"))) == 12 * 4 + 1
    assert len(match_modules(sig("llama"), sel("** is Module"))) == 422
    assert match_modules(sig("llama"), sel("** is LlamaRMSNorm"))[-1] == "model.norm"


def test_mixtral_selectors_see_modules_not_experts(sig, sel) -> None:
    s = sig("mixtral-8x7b")
    # Only the attention projections are Linear; the experts are 3-D parameters.
    assert len(match_modules(s, sel("layers[*].** is Linear"))) == 32 * 4
    assert match_params(s, sel("layers[0].mlp.experts.*")) == [
        ("model.layers.0.mlp.experts", "gate_up_proj"), ("model.layers.0.mlp.experts", "down_proj")]
    assert match_modules(s, sel("@layers[-1].@experts")) == ["model.layers.31.mlp.experts"]


def test_match_targets_takes_modules_or_parameters(sig, sel) -> None:
    modules, params = match_targets(sig("llama"), sel("layers[-2:], norm, lm_head.weight"))
    assert modules == ["model.layers.30", "model.layers.31", "model.norm"]
    assert params == [("lm_head", "weight")]
    modules, params = match_targets(sig("bert-base"), sel("**.bias except encoder.**"))
    assert modules == [] and params[0] == ("embeddings.LayerNorm", "bias")
    assert params[-1] == ("pooler.dense", "bias") and len(params) == 2


def test_exceptions_remove_modules_and_their_parameters(sig, sel) -> None:
    params = match_params(sig("llama"), sel("**.weight except lm_head, layers[*].**"))
    assert params == [("model.embed_tokens", "weight"), ("model.norm", "weight")]


def test_tied_parameters_are_listed_under_each_path(sig, sel) -> None:
    found = match_params(sig("gpt2"), sel("{wte, lm_head}.weight"))
    assert found == [("transformer.wte", "weight"), ("lm_head", "weight")]


# ----------------------------------------------------------------------
# `for` overrides.


def test_selector_matches_path_for_overrides(sig, sel) -> None:
    s = sig("llama")
    last_two = sel("layers[-2:].**")
    assert selector_matches_path(s, last_two, "model.layers.30.mlp.gate_proj")
    assert selector_matches_path(s, last_two, "model.layers.31.mlp.down_proj.weight")
    assert not selector_matches_path(s, last_two, "model.layers.29.mlp.gate_proj")
    down = sel("mlp.down_proj")
    assert selector_matches_path(s, down, "model.layers.3.mlp.down_proj")
    assert not selector_matches_path(s, down, "model.layers.3.mlp.up_proj")
    assert not selector_matches_path(s, down, "model.layers.3.mlp.down_proj.weight")
    assert selector_matches_path(s, sel("**.weight except lm_head"), "model.norm.weight")
    assert not selector_matches_path(s, sel("**.weight except lm_head"), "lm_head.weight")


def test_selector_matches_path_raises_for_a_selector_matching_nothing(sig, sel) -> None:
    with pytest.raises(BindError, match="did you mean 'layers'"):
        selector_matches_path(sig("llama"), sel("layrs[-2:].**"), "model.layers.30")


# ----------------------------------------------------------------------
# Errors.


def test_misspelt_segment_shows_nearest_paths_and_a_suggestion(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_modules(sig("llama"), sel("layers[0].self_attn.q_prj"))
    diag = info.value.diagnostics[0]
    assert diag.message == "'layers[0].self_attn.q_prj' matches nothing in llama"
    assert diag.hint == "did you mean 'q_proj'?"
    assert (diag.span.file, diag.span.line, diag.span.col) == ("<selector>", 1, 21)  # under q_prj
    assert diag.notes[0] == "nearest: model.layers.0.self_attn.q_proj"
    assert 1 < len(diag.notes) <= 5


def test_existing_names_in_an_impossible_order_show_nearest_paths(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_modules(sig("llama"), sel("mlp.self_attn"))
    diag = info.value.diagnostics[0]
    assert diag.hint is None and diag.span.col == 1
    assert any("self_attn" in note for note in diag.notes)


def test_unknown_role_lists_the_models_roles(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_modules(sig("gpt2"), sel("@layers[0].@gate"))
    diag = info.value.diagnostics[0]
    assert diag.message == "gpt2 (gpt2 family) has no role '@gate'"
    assert diag.span.col == 12
    assert diag.notes == ("roles of gpt2: @layers, @attn, @qkv, @o, @mlp, @up, @down, @embed, @head, @norm",)
    with pytest.raises(BindError, match="did you mean '@mlp'"):
        match_modules(sig("gpt2"), sel("@mpl"))


def test_role_error_false_lets_a_missing_role_match_nothing(sig, sel) -> None:
    assert match_modules(sig("gpt2"), sel("@gate, @up"), role_error=False) == [
        f"transformer.h.{i}.mlp.c_fc" for i in range(12)]
    assert match_modules(sig("gpt2"), sel("@gate"), role_error=False) == []
    with pytest.raises(BindError, match="'c_fx' matches nothing"):
        match_modules(sig("gpt2"), sel("@gate, c_fx"), role_error=False)


def test_index_out_of_range_says_the_lists_length(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_modules(sig("llama"), sel("layers[40].mlp"))
    diag = info.value.diagnostics[0]
    assert diag.message == "index 40 is out of range: 'model.layers' has 32 items"
    assert diag.hint == "use 0..31, or -32..-1 to count from the end"
    assert diag.span.col == 7
    with pytest.raises(BindError, match="index -33 is out of range"):
        match_modules(sig("llama"), sel("layers[0, -33]"))  # even when other items match
    assert match_modules(sig("llama"), sel("layers[30:99]")) == ["model.layers.30", "model.layers.31"]


def test_index_on_a_module_that_is_not_a_list(sig, sel) -> None:
    with pytest.raises(BindError, match="'model.layers.0.mlp', which is not a list of modules"):
        match_modules(sig("llama"), sel("mlp[0]"))


def test_class_filter_that_removes_everything_lists_classes(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_modules(sig("llama"), sel("layers[*].mlp is Linaer"))
    diag = info.value.diagnostics[0]
    assert diag.message == "'layers[*].mlp is Linaer' matches 32 modules, none of class Linaer"
    assert diag.hint == "did you mean 'Linear'?"
    assert diag.notes == ("matched 32 x LlamaMLP",)


def test_parameters_where_modules_are_wanted_and_back(sig, sel) -> None:
    with pytest.raises(BindError, match="names parameters") as info:
        match_modules(sig("llama"), sel("lm_head.weight"))
    assert info.value.diagnostics[0].hint == "drop the parameter name: `lm_head`"
    with pytest.raises(BindError, match="names modules, not parameters"):
        match_params(sig("llama"), sel("lm_head"))


def test_each_union_member_must_match(sig, sel) -> None:
    with pytest.raises(BindError, match="'v_prj' matches nothing"):
        match_modules(sig("llama"), sel("q_proj, v_prj"))


def test_exceptions_that_remove_everything(sig, sel) -> None:
    with pytest.raises(BindError, match="its exceptions remove every match"):
        match_modules(sig("llama"), sel("q_proj except self_attn.*"))


def test_anchored_selector_must_start_at_the_root(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_modules(sig("llama"), sel("/layers[0]"))
    assert "nearest: model.layers.0" in info.value.diagnostics[0].notes


def test_misspelt_parameter_path_suggests_parameters(sig, sel) -> None:
    with pytest.raises(BindError) as info:
        match_targets(sig("llama"), sel("lm_haed.weight"))
    diag = info.value.diagnostics[0]
    assert diag.hint == "did you mean 'lm_head'?"
    assert diag.notes[0] == "nearest: lm_head.weight"


# ----------------------------------------------------------------------
# Speed: the walk is linear in modules (measured on the biggest presets).


@pytest.mark.parametrize("preset", ["llama-2-70b", "mixtral-8x7b"])
def test_matching_large_models_takes_milliseconds(sig, sel, preset: str) -> None:
    s = sig(preset)
    for text in ("**", "layers[*].**", "layers[*].** is Linear", "**.weight", "@layers[-2:].@mlp"):
        selector = sel(text)
        start = time.perf_counter()
        found = match_targets(s, selector)
        elapsed = time.perf_counter() - start
        print(f"{preset}: {text!r} -> {len(found[0])} modules, {len(found[1])} params "
              f"in {elapsed * 1000:.2f} ms")
        assert elapsed < 0.5  # ~2 ms measured; a backtracking blow-up would take seconds
    # Everything inside the blocks: all modules but the root, model, embed_tokens,
    # layers, norm, rotary_emb and lm_head.
    assert len(match_modules(s, sel("layers[*].**"))) == len(s.modules) - 7


def test_leading_index_selects_children_of_a_sequential_root():
    """A plain ``nn.Sequential`` model: ``/[*]`` and ``/[-1]`` index the root's children."""
    import torch.nn as nn

    import adaptlang

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    plan = adaptlang.compile("adaptlang 1\nlora a { on /[*] is Linear\n rank 2 }", model)
    assert [s["path"] for s in plan.sites_of("a")] == ["0", "2"]
    plan = adaptlang.compile("adaptlang 1\nlora a { on /[-1]\n rank 2 }", model)
    assert [s["path"] for s in plan.sites_of("a")] == ["2"]
    with pytest.raises(adaptlang.BindError, match="index 5 is out of range: the root module has 3 items"):
        adaptlang.compile("adaptlang 1\nlora a { on /[5]\n rank 2 }", model)
