"""End-to-end fidelity to PEFT: whole tiny HF models, ``adaptlang.apply`` vs ``peft.get_peft_model``.

The reference is PEFT itself (0.21): the same random model is deep-copied,
one copy is patched by ``adaptlang.apply`` from a spec, the other by
``peft.get_peft_model`` from the equivalent config. Our delta values are
copied into PEFT's parameters (random, so every term is visible), then
logits, loss and every delta parameter's gradient are compared in fp32
within 1e-5, and the trainable-parameter counts must be equal. The
unit-level comparisons (one layer at a time) live in ``test_lora.py``,
``test_ia3.py`` and ``test_prompt.py``; these tests add the plumbing of a
real model: selectors and overrides, rank/alpha patterns, GPT-2's fused
``Conv1D``, feed-forward IA3 sites, the prompt hook.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, PromptTuningConfig, TaskType, get_peft_model

import adaptlang
from adaptlang.plan.models import load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT calls deprecated HF names

SPECS = Path(__file__).resolve().parents[2] / "specs"

LLAMA_QV = """adaptlang 1
lora qv {
    on    layers[*].self_attn.{q_proj, v_proj}
    rank  4
    alpha 8
    rank  2 for layers[1].**
    alpha 3 for layers[1].self_attn.v_proj
}
"""

GPT2_DORA = """adaptlang 1
lora fused {
    on      h[*].attn.c_attn
    variant dora
    rank    4
    alpha   6
}
"""

LLAMA_RSLORA = """adaptlang 1
lora all_linear {
    on      layers[*].** is Linear
    variant rslora
    rank    4
    alpha   3
}
"""


def peft_copy(model: torch.nn.Module, config) -> torch.nn.Module:
    """PEFT's model on a deep copy of ``model`` (same base weights), in eval mode."""
    return get_peft_model(copy.deepcopy(model), config).eval()


def peft_param(peft_model: torch.nn.Module, site: str, local: str) -> torch.nn.Parameter:
    """PEFT's parameter for our ``{site path}/{local name}`` (adapter name ``default``)."""
    layer = peft_model.base_model.model.get_submodule(site)
    if local == "lora_A":
        return layer.lora_A["default"].weight
    if local == "lora_B":
        return layer.lora_B["default"].weight
    if local == "magnitude":
        return layer.lora_magnitude_vector["default"].weight
    if local == "ia3_l":
        return layer.ia3_l["default"]
    raise AssertionError(f"no PEFT counterpart for {local}")


def randomize_into_both(adapted, delta: str, peft_model: torch.nn.Module, seed: int = 3) -> dict:
    """Gives every parameter of ``delta`` random values, the same in PEFT; returns ``{key: (ours, theirs)}``.

    PEFT keeps IA3 vectors as (out, 1) / (1, in); ours are flat, so values go through ``view``.
    """
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    with torch.no_grad():
        for key, ours in adapted.delta_parameters(delta).items():
            site, local = key.rsplit("/", 1)
            theirs = peft_param(peft_model, site, local)
            assert theirs.numel() == ours.numel(), key
            # Both start from the same deterministic values where PEFT's init is not random.
            if local in ("magnitude", "ia3_l"):
                torch.testing.assert_close(ours.detach(), theirs.detach().view(ours.shape), atol=1e-6, rtol=1e-6)
            centre = 1.0 if local in ("magnitude", "ia3_l") else 0.0
            ours.copy_(centre + 0.3 * torch.randn(ours.shape, generator=gen))
            theirs.copy_(ours.view(theirs.shape))
            pairs[key] = (ours, theirs)
    return pairs


def peft_trainable(peft_model: torch.nn.Module) -> int:
    """PEFT's own count of trainable parameters."""
    return peft_model.get_nb_trainable_parameters()[0]


def ours_trainable(adapted) -> int:
    return sum(p.numel() for _, p in adapted.trainable_parameters())


def compare_forward_backward(adapted, peft_model, pairs: dict, batch: dict) -> None:
    """Logits, loss and every paired gradient agree within 1e-5 (fp32)."""
    ours = adapted(**batch)
    theirs = peft_model(**batch)
    assert ours.logits.shape == theirs.logits.shape
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    ours.loss.backward()
    theirs.loss.backward()
    for key, (p_ours, p_theirs) in pairs.items():
        assert p_ours.grad is not None and p_theirs.grad is not None, key
        torch.testing.assert_close(p_ours.grad, p_theirs.grad.view(p_ours.shape), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, k=key: f"{k}: {m}")


def test_lora_with_rank_and_alpha_overrides_matches_peft_patterns(rt):
    model, _ = load_model("tiny-llama", device="cpu")
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
        rank_pattern={"model.layers.1.self_attn.q_proj": 2, "model.layers.1.self_attn.v_proj": 2},
        alpha_pattern={"model.layers.1.self_attn.v_proj": 3})
    ref = peft_copy(model, config)
    adapted = adaptlang.apply(model, LLAMA_QV)
    params = adapted.delta_parameters("qv")
    # The per-site overrides reached the runtime: layer 1 has rank 2, layer 0 rank 4.
    assert params["model.layers.1.self_attn.v_proj/lora_A"].shape == (2, 32)
    assert params["model.layers.0.self_attn.q_proj/lora_A"].shape == (4, 32)
    pairs = randomize_into_both(adapted, "qv", ref)
    # q is 32 -> 32, v is 32 -> 16 (2 KV heads x 8): layer 0 at rank 4, layer 1 at rank 2.
    assert ours_trainable(adapted) == peft_trainable(ref) == 4 * (64 + 48) + 2 * (64 + 48)
    compare_forward_backward(adapted, ref, pairs, rt.lm_batch())


def test_dora_on_gpt2_fused_conv1d_matches_peft(rt):
    model, _ = load_model("tiny-gpt2", device="cpu")
    ref = peft_copy(model, LoraConfig(r=4, lora_alpha=6, target_modules=["c_attn"], use_dora=True,
                                      fan_in_fan_out=True, lora_dropout=0.0))
    adapted = adaptlang.apply(model, GPT2_DORA)
    pairs = randomize_into_both(adapted, "fused", ref)
    assert {key.rsplit("/", 1)[1] for key in pairs} == {"lora_A", "lora_B", "magnitude"}
    # Per layer: r * (in + out) + out magnitudes, c_attn is 32 -> 96.
    assert ours_trainable(adapted) == peft_trainable(ref) == 2 * (4 * (32 + 96) + 96)
    compare_forward_backward(adapted, ref, pairs, rt.lm_batch())


def test_rslora_on_every_linear_matches_peft(rt):
    model, _ = load_model("tiny-llama", device="cpu")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ref = peft_copy(model, LoraConfig(r=4, lora_alpha=3, target_modules=targets, use_rslora=True,
                                      lora_dropout=0.0))
    adapted = adaptlang.apply(model, LLAMA_RSLORA)
    pairs = randomize_into_both(adapted, "all_linear", ref)
    assert ours_trainable(adapted) == peft_trainable(ref)
    compare_forward_backward(adapted, ref, pairs, rt.lm_batch())


def test_ia3_spec_with_feedforward_sites_matches_peft(rt):
    model, _ = load_model("tiny-llama", device="cpu")
    ref = peft_copy(model, IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                     feedforward_modules=["down_proj"]))
    adapted = adaptlang.apply(model, SPECS / "ia3.adapt")
    pairs = randomize_into_both(adapted, "scale", ref)
    down = adapted.delta_parameters("scale")["model.layers.0.mlp.down_proj/ia3_l"]
    assert down.numel() == 64  # the MLP's input width: scaled before down_proj, not after
    # k and v project to 2 KV heads x 8 = 16 features each; down_proj's input is 64 wide.
    assert ours_trainable(adapted) == peft_trainable(ref) == 2 * (16 + 16 + 64)
    compare_forward_backward(adapted, ref, pairs, rt.lm_batch())


def test_prompt_spec_on_gpt2_matches_peft_prompt_tuning(rt):
    model, _ = load_model("tiny-gpt2", device="cpu")
    ref = peft_copy(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=32))
    adapted = adaptlang.apply(model, SPECS / "prompt.adapt")
    (ours,) = adapted.delta_parameters("prefix").values()
    theirs = ref.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        ours.copy_(torch.randn(ours.shape, generator=torch.Generator().manual_seed(4)))
        theirs.copy_(ours)
    assert ours_trainable(adapted) == peft_trainable(ref) == 32 * 32
    batch = rt.lm_batch()
    out_ours, out_theirs = adapted(**batch), ref(**batch)
    assert out_ours.logits.shape == out_theirs.logits.shape == (2, 32 + 7, 64)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ours.loss, out_theirs.loss, atol=1e-5, rtol=1e-5)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec,config", [
    (LLAMA_QV, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          rank_pattern={"model.layers.1.self_attn.q_proj": 2,
                                        "model.layers.1.self_attn.v_proj": 2})),
    (SPECS / "lora.adapt", LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
    (SPECS / "dora.adapt", LoraConfig(r=8, lora_alpha=16, use_dora=True,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
], ids=["overrides", "lora.adapt", "dora.adapt"])
def test_trainable_parameter_counts_equal_peft(spec, config):
    model, _ = load_model("tiny-llama", device="cpu")
    ref = peft_copy(model, config)
    adapted = adaptlang.apply(model, spec)
    task = adapted.tasks[0]
    expected = adapted.plan.to_dict()["tasks"][task]["trainable_params"]
    assert ours_trainable(adapted) == peft_trainable(ref) == expected
