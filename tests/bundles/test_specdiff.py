"""Semantic spec diffs on realistic edits of LANGUAGE.md's multitask spec."""

from __future__ import annotations

import pytest

import adaptlang
from adaptlang.bundles.specdiff import SpecDiff, diff_plans, diff_specs, render_diff


@pytest.fixture(scope="module")
def base_text(request):
    from pathlib import Path

    return (Path(__file__).resolve().parents[2] / "specs" / "multitask.adapt").read_text()


def changes(old: str, new: str) -> dict[tuple[str, str], list[str]]:
    result = diff_specs(adaptlang.parse(old), adaptlang.parse(new))
    return {(c.what, c.name): [c.status, *c.details] for c in result}


def test_layout_comments_and_written_form_are_not_changes(base_text):
    reformatted = base_text.replace("alpha   2 * r", "alpha 16").replace("# per-site override", "")
    reformatted = "\n\n".join(reformatted.split("\n"))  # blank lines everywhere
    assert changes(base_text, reformatted) == {}


def test_property_override_and_task_edits(base_text):
    new = (base_text.replace("rank    r\n", "rank    r\n    dropout 0.1 for layers[0].**\n")
           .replace("size    64", "size    32")
           .replace("task qa        = attn + mlp", "task qa = attn + 0.5 * mlp"))
    found = changes(base_text, new)
    assert found[("delta", "attn")] == ["changed", "+ dropout 0.1 for layers[0].**"]
    assert found[("delta", "bottleneck")] == ["changed", "size: 64 -> 32"]
    assert found[("task", "qa")] == ["changed", "attn + mlp -> attn + 0.5 * mlp"]
    # 'both' and 'qa_v2' use qa, so they change with it.
    assert found[("task", "both")] == ["changed", "attn + 0.5 * bottleneck + 0.5 * mlp -> "
                                                  "attn + 0.5 * bottleneck + 0.25 * mlp"]


def test_added_and_removed_deltas_and_tasks(base_text):
    new = base_text.replace("task qa_v2     = frozen(qa) + head + instruct", "") + (
        "\nia3 scale {\n    on layers[*].self_attn.k_proj\n}\ntask scaled = scale\n")
    found = changes(base_text, new)
    assert found[("delta", "scale")][0] == "added"
    assert found[("task", "scaled")] == ["added", "scale"]
    assert found[("task", "qa_v2")] == ["removed", "frozen(attn) + frozen(mlp) + head + instruct"]


def test_with_a_model_sites_gained_lost_and_counts(base_text):
    old = adaptlang.compile(adaptlang.parse(base_text), "llama")
    new_text = base_text.replace("layers[*].self_attn.{q_proj, v_proj}",
                                 "layers[-4:].self_attn.{q_proj, k_proj, v_proj}")
    new = adaptlang.compile(adaptlang.parse(new_text), "llama")
    plan = {(c.what, c.name): c.details for c in diff_plans(old, new)}
    # LANGUAGE.md: attn is 64 sites, 4,194,304 parameters on Llama-2-7B; now 3 projections x 4 layers.
    assert plan[("delta", "attn")][0] == "64 -> 12 sites, 4,194,304 -> 786,432 parameters"
    assert "+ model.layers.28.self_attn.k_proj" in plan[("delta", "attn")]
    assert "- model.layers.0.self_attn.q_proj" in plan[("delta", "attn")]
    assert any(line.startswith("- ... and ") for line in plan[("delta", "attn")])
    assert plan[("task", "qa")] == ["trainable 11,444,224 -> 8,036,352, bundle 11,444,224 -> 8,036,352"]
    text = render_diff(SpecDiff(diff_specs(adaptlang.parse(base_text), adaptlang.parse(new_text)),
                                diff_plans(old, new)), "old.adapt", "new.adapt", "llama")
    assert text.startswith("--- old.adapt\n+++ new.adapt\nspec:\n  ~ delta attn changed\n")
    assert "plan on llama:\n" in text


def test_no_change_renders_as_such(base_text):
    spec = adaptlang.parse(base_text)
    assert render_diff(SpecDiff(diff_specs(spec, spec)), "a", "b") == "--- a\n+++ b\nno semantic changes\n"
