"""``paths_selector``: compact selectors that match exactly the given paths (checked by the real selector engine)."""

from __future__ import annotations

import random

import pytest

from adaptlang.bundles.spec_writer import paths_selector
from adaptlang.errors import BundleError
from adaptlang.plan.compiler import compile_plan
from adaptlang.plan.signature import load_preset_signature


def matched(selector: str, preset: str = "tiny-llama") -> list[str]:
    """The sites a one-delta IA3 spec with this selector gets (the compiler's own matching)."""
    spec = f"adaptlang 1\nia3 x {{\n    on {selector}\n}}\n"
    return [s["path"] for s in compile_plan(spec, preset).sites_of("x")]


def test_products_merge_into_one_selector():
    paths = [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert paths_selector(paths) == "/model.layers[0, 1].self_attn.{q_proj, v_proj}"


def test_irregular_sets_split_into_exact_parts():
    paths = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert paths_selector(paths) == "/model.layers[0].self_attn.q_proj, /model.layers[1].mlp.{down_proj, up_proj}"


@pytest.mark.parametrize("seed", range(12))
def test_random_subsets_of_linear_layers_round_trip_exactly(seed):
    sig = load_preset_signature("tiny-llama")
    linear = [p for p, m in sig.modules.items() if m.cls == "Linear" and p != "lm_head"]
    rng = random.Random(seed)
    chosen = sorted(rng.sample(linear, rng.randint(1, len(linear))))
    assert sorted(matched(paths_selector(chosen))) == chosen


def test_paths_a_selector_cannot_spell_are_refused():
    with pytest.raises(BundleError, match="cannot be written as a selector"):
        paths_selector(["model.experts-0.w1"])
