"""``adaptlang.load``: fingerprints, ``strict=False``, several bundles on one base, failed loads."""

from __future__ import annotations

import warnings

import pytest
import torch

import adaptlang
from adaptlang.bundles import read_bundle
from adaptlang.errors import BundleError, RuntimeApplyError

TWO_TASKS = """adaptlang 1
lora attn {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
lora mlp {
    on   layers[*].mlp.up_proj
    rank 2
}
task a = attn + mlp
task b = attn
"""


def wider_mlp_llama(seed: int = 0):
    """tiny-llama with intermediate size 48 instead of 64: attention fits, the MLP does not."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def two_task_bundles(bt, tmp_path):
    adapted = bt.apply(TWO_TASKS)
    bt.randomize(adapted)
    return adapted, adapted.save(tmp_path)


def test_a_bundle_for_another_model_is_refused_naming_modules(bt, two_task_bundles):
    _, paths = two_task_bundles
    model = wider_mlp_llama()
    before = bt.capture_state(model)
    with pytest.raises(BundleError) as err:
        adaptlang.load(model, paths[0])
    text = str(err.value)
    assert str(paths[0]) in text and "fingerprints differ" in text
    # The first differing module, both sides described (64 -> 48 wide MLP).
    assert "'model.layers.0.mlp.gate_proj': the bundle's model has Linear weight:64x32, " \
           "this one has Linear weight:48x32" in text
    assert "strict=False" in text
    bt.assert_same_state(model, before)


def test_strict_false_loads_what_fits_and_reports_the_rest(bt, two_task_bundles):
    adapted, paths = two_task_bundles
    with pytest.warns(UserWarning, match="do not fit"):
        loaded = adaptlang.load(wider_mlp_llama(), paths, strict=False)
    assert loaded.tasks == ["a", "b"]
    # attn fits everywhere; mlp's up_proj (32 -> 64 in the bundle, 32 -> 48 here) fits nowhere.
    assert loaded.plan.deltas == ("attn",)
    assert [t["name"] for t in loaded.plan.task("a")["deltas"]] == ["attn"]
    # design.md's LoRA count r*(in+out) per site: q 32->32, v 32->16 (2 KV heads of 8), 2 layers.
    assert loaded.plan.task("a")["bundle_params"] == 2 * (4 * (32 + 32) + 4 * (32 + 16))
    for key, value in loaded.adapter_state_dict("b").items():
        assert torch.equal(value, adapted.adapter_state_dict("b")[key]), key
    skipped = loaded.load_report["skipped"]
    assert "a.safetensors: delta 'mlp': skipped 'model.layers.0.mlp.up_proj' maps 32->48, the bundle needs " \
           "32->64" in skipped
    assert "a.safetensors: delta 'mlp': no site fits this model; left out" in skipped
    assert loaded.load_report["mismatch"]


def test_strict_false_drops_a_task_with_nothing_that_fits(bt, tmp_path):
    spec = """adaptlang 1
lora mlp {
    on   layers[*].mlp.up_proj
    rank 2
}
"""
    adapted = bt.apply(spec)
    (path,) = adapted.save(tmp_path)
    model = wider_mlp_llama()
    before = bt.capture_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BundleError, match="nothing in these bundles fits this model"):
            adaptlang.load(model, path, strict=False)
    bt.assert_same_state(model, before)


def test_tasks_saved_together_share_their_deltas(bt, two_task_bundles):
    adapted, paths = two_task_bundles
    loaded = adaptlang.load(bt.tiny(), paths)
    assert loaded.load_report["shared"] == ["delta 'attn': equal in tasks 'a' and 'b', loaded once and shared"]
    assert sorted(loaded.plan.deltas) == ["attn", "mlp"]
    # One set of parameters: training 'b' moves 'a' too, as in the model that saved them.
    with loaded.use("b"):
        trained_by_b = {id(p) for _, p in loaded.trainable_parameters()}
    with loaded.use("a"):
        trained_by_a = {id(p) for _, p in loaded.trainable_parameters()}
    assert trained_by_b == {id(p) for p in loaded.delta_parameters("attn").values()}
    assert trained_by_b < trained_by_a


def test_differing_deltas_of_the_same_name_are_renamed_and_keep_their_values(bt, tmp_path):
    first = bt.apply(TWO_TASKS)
    bt.randomize(first, seed=1)
    (path_a,) = first.save(tmp_path / "one", tasks=["a"])
    second = bt.apply(TWO_TASKS)
    bt.randomize(second, seed=2)  # attn now differs from the first model's
    (path_b,) = second.save(tmp_path / "two", tasks=["b"])
    loaded = adaptlang.load(bt.tiny(), [path_a, path_b])
    assert sorted(loaded.plan.deltas) == ["attn", "attn_b", "mlp"]
    assert "renamed 'attn_b'" in loaded.load_report["renamed"][0]
    out = bt.outputs(loaded)
    assert torch.equal(out["a"], bt.outputs(first, ["a"])["a"])
    assert torch.equal(out["b"], bt.outputs(second, ["b"])["b"])


def test_one_task_in_two_bundles_is_refused(bt, two_task_bundles):
    _, paths = two_task_bundles
    model = bt.tiny()
    before = bt.capture_state(model)
    with pytest.raises(BundleError, match="task 'a' is in two bundles"):
        adaptlang.load(model, [paths[0], paths[0]])
    bt.assert_same_state(model, before)


def test_switching_and_choosing_the_first_task(bt, two_task_bundles):
    adapted, paths = two_task_bundles
    loaded = adaptlang.load(bt.tiny(), paths, task="b")
    assert loaded.active_task == "b"
    reference = bt.outputs(adapted)
    for task, logits in bt.outputs(loaded).items():
        assert torch.equal(logits, reference[task]), task


def test_an_adapted_model_and_bad_arguments_are_refused(bt, two_task_bundles):
    _, paths = two_task_bundles
    loaded = adaptlang.load(bt.tiny(), paths)
    with pytest.raises(RuntimeApplyError, match="already adapted"):
        adaptlang.load(loaded.model, paths)
    with pytest.raises(adaptlang.UsageError, match="no bundle to load"):
        adaptlang.load(bt.tiny(), [])


def test_a_failure_after_patching_leaves_the_model_untouched(bt, two_task_bundles, monkeypatch):
    from adaptlang.bundles import loading

    _, paths = two_task_bundles
    model = bt.tiny()
    before = bt.capture_state(model)

    def broken(adapted, loaded):
        raise RuntimeError("disk went away while copying")

    monkeypatch.setattr(loading, "_copy_tensors", broken)
    with pytest.raises(BundleError, match="copying bundle tensors failed"):
        adaptlang.load(model, paths)
    bt.assert_same_state(model, before)


def test_loaded_handles_save_and_export_like_applied_ones(bt, two_task_bundles, tmp_path):
    adapted, paths = two_task_bundles
    loaded = adaptlang.load(bt.tiny(), paths[1])
    (again,) = loaded.save(tmp_path)
    assert read_bundle(again).manifest == read_bundle(paths[1]).manifest
