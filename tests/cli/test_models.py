"""``adaptc match``, ``inspect``, ``presets`` and ``schema``."""

from __future__ import annotations

import json

from adaptlang.plan.models import list_presets
from adaptlang.plan.schema import plan_json_schema

from .conftest import LOCATION, TRACEBACK, assert_caret_under, invoke


def test_match_lists_modules_with_shapes(runner):
    result = invoke(runner, "match", "layers[-2:].self_attn.{q_proj, v_proj}", "--model", "llama")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "4 modules in llama" in out
    for path in ("model.layers.30.self_attn.q_proj", "model.layers.31.self_attn.v_proj"):
        assert path in out
    assert "model.layers.29." not in out
    assert "Linear" in out and "4096→4096" in out and "weight 4096×4096" in out


def test_match_roles_and_class_filter(runner):
    result = invoke(runner, "match", "@layers[0].@mlp.** is Linear", "--model", "llama")
    assert result.exit_code == 0, result.output
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert f"model.layers.0.mlp.{name}" in result.stdout
    assert "3 modules" in result.stdout


def test_match_parameters(runner):
    result = invoke(runner, "match", "lm_head.weight", "--model", "llama")
    assert result.exit_code == 0, result.output
    assert "lm_head.weight" in result.stdout
    assert "32000×4096" in result.stdout and "131,072,000" in result.stdout


def test_match_nothing_shows_nearest_paths(runner):
    selector = "layers[0].self_attn.q_prj"
    result = invoke(runner, "match", selector, "--model", "llama")
    assert result.exit_code == 1
    match = LOCATION.search(result.stderr)
    assert match and match["file"] == "<selector>" and match["line"] == "1", result.stderr
    assert f"    {selector}" in result.stderr.splitlines()
    assert_caret_under(result.stderr, int(match["col"]))
    assert "q_proj" in result.stderr
    assert TRACEBACK not in result.output


def test_match_syntax_error_points_into_the_selector(runner):
    selector = "layers[*].{q_proj,"
    result = invoke(runner, "match", selector, "--model", "llama")
    assert result.exit_code == 1
    match = LOCATION.search(result.stderr)
    assert match and match["file"] == "<selector>" and match["line"] == "1", result.stderr
    assert 1 <= int(match["col"]) <= len(selector) + 1
    assert f"    {selector}" in result.stderr.splitlines()
    assert TRACEBACK not in result.output


def test_match_needs_a_model(runner):
    result = invoke(runner, "match", "q_proj")
    assert result.exit_code == 2


def test_inspect_collapses_repeated_layers(runner):
    result = invoke(runner, "inspect", "--model", "llama")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "layers[0..31] × 32 LlamaDecoderLayer" in out
    assert out.count("q_proj") == 1  # only the first layer is expanded
    assert "@q" in out and "@layers" in out
    assert "4096→4096" in out and "weight 32000×4096" in out
    assert "LlamaForCausalLM" in out.splitlines()[0]


def test_inspect_depth_limits_the_tree(runner):
    full = invoke(runner, "inspect", "--model", "llama").stdout
    shallow = invoke(runner, "inspect", "--model", "llama", "--depth", "1")
    assert shallow.exit_code == 0, shallow.output
    assert "q_proj" not in shallow.stdout and "lm_head" in shallow.stdout
    assert len(shallow.stdout.splitlines()) < len(full.splitlines())


def test_inspect_roles_table(runner):
    result = invoke(runner, "inspect", "--model", "llama", "--roles")
    assert result.exit_code == 0, result.output
    assert "@q" in result.stdout and "model.layers[0..31].self_attn.q_proj" in result.stdout


def test_inspect_unknown_model_is_an_error_without_traceback(runner):
    result = invoke(runner, "inspect", "--model", "no-such-model-preset")
    assert result.exit_code in (1, 2)
    assert "error:" in result.stderr
    assert TRACEBACK not in result.output


def test_presets_lists_every_preset(runner):
    result = invoke(runner, "presets")
    assert result.exit_code == 0, result.output
    presets = list_presets()
    names = presets.keys() if isinstance(presets, dict) else [getattr(p, "name", p) for p in presets]
    for name in names:
        assert str(name) in result.stdout
    assert "llama" in result.stdout and "gpt2" in result.stdout


def test_schema_is_the_plan_schema_as_json(runner):
    result = invoke(runner, "schema")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == plan_json_schema()
    assert result.stdout.endswith("}\n")
