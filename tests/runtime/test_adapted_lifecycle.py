"""The ``Adapted`` lifecycle: merging, ``remove()``, failed applies, quantized bases.

"Exactly as before" is checked with ``rt.capture_state`` /
``rt.assert_same_state``: same module and parameter objects at every path,
bit-identical state dict, same ``requires_grad`` flags, hooks and
attributes. Failures are injected by making a runtime step raise at its
Nth call *after* doing its work, so the rollback has a half-done step to undo.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptlang
from adaptlang.errors import RuntimeApplyError
from adaptlang.plan.models import load_model
from tests.runtime.adapted_support import logits, randomize, tiny_llama
from adaptlang.runtime.prompt import PromptController
from adaptlang.runtime.site import SiteModule
from adaptlang.runtime.tune import TuneSlots

SPECS = Path(__file__).resolve().parents[2] / "specs"
Q0 = "model.layers.0.self_attn.q_proj"

TWO_TASKS = """adaptlang 1
lora a {
    on   layers[*].self_attn.{q_proj, v_proj}
    rank 4
}
lora b {
    on   layers[*].self_attn.q_proj
    rank 2
}
adapter c {
    after layers[*].mlp
    size  8
}
task first  = a + c
task second = b
"""

MIXED = """adaptlang 1
lora plain {
    on    layers[*].self_attn.{q_proj, v_proj}
    rank  4
    alpha 8
}
lora dora {
    on      layers[*].self_attn.q_proj
    variant dora
    rank    2
}
ia3 scale {
    on          layers[*].{self_attn.k_proj, mlp.down_proj}
    feedforward true for mlp.down_proj
}
adapter side {
    after layers[*].mlp
    size  4
}
task mix = 0.5 * plain + dora + 0.75 * scale + side
"""


# ----------------------------------------------------------------- merging
def test_merge_equals_unmerged_and_unmerge_restores_the_weights(rt):
    model = tiny_llama()
    adapted = adaptlang.apply(model, MIXED)
    randomize(adapted, "plain", "dora", "scale", "side")
    batch = rt.lm_batch()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    unmerged = logits(adapted, batch)
    report = adapted.merge()
    assert adapted.merged
    # Adapters run beside the weights and stay active; every LoRA/DoRA/IA3 site folds in.
    assert set(report["not_merged"]) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert set(report["merged"]) == {f"model.layers.{i}.{m}" for i in range(2)
                                     for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "mlp.down_proj")}
    merged_state = model.state_dict()
    assert not torch.equal(merged_state[f"{Q0}.weight"], weights[f"{Q0}.weight"])
    assert not torch.equal(merged_state["model.layers.0.mlp.down_proj.weight"],
                           weights["model.layers.0.mlp.down_proj.weight"])
    torch.testing.assert_close(logits(adapted, batch), unmerged, atol=1e-5, rtol=1e-5)
    adapted.unmerge()
    assert not adapted.merged
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert torch.equal(logits(adapted, batch), unmerged)


def test_tied_and_quantized_weights_are_not_merged(rt):
    # GPT-2's lm_head shares its weight with wte: folding a delta into it would change the embedding too.
    torch.manual_seed(0)
    model, _ = load_model("tiny-gpt2", device="cpu")
    adapted = adaptlang.apply(model, "adaptlang 1\nlora l {\n    on @head, @layers[*].@qkv\n    rank 4\n}\n")
    randomize(adapted, "l")
    batch = rt.lm_batch()
    unmerged = logits(adapted, batch)
    wte = model.transformer.wte.weight.detach().clone()
    report = adapted.merge()
    assert report["merged"] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert list(report["not_merged"]) == ["lm_head"] and "tied" in report["not_merged"]["lm_head"]
    assert torch.equal(model.transformer.wte.weight, wte)
    torch.testing.assert_close(logits(adapted, batch), unmerged, atol=1e-5, rtol=1e-5)
    adapted.unmerge()

    qlora = adaptlang.apply(tiny_llama(), SPECS / "qlora.adapt")
    report = qlora.merge()
    assert report["merged"] == [] and len(report["not_merged"]) == 14
    assert set(report["not_merged"].values()) == {"the base weight is quantized"}


def test_switching_tasks_unmerges_first(rt):
    model = tiny_llama()
    adapted = adaptlang.apply(model, TWO_TASKS)
    randomize(adapted, "a", "b", "c")
    batch = rt.lm_batch()
    with adapted.use("second"):
        expected = logits(adapted, batch)
    adapted.merge()
    adapted.use("second")
    assert not adapted.merged
    torch.testing.assert_close(logits(adapted, batch), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------- removal
def train_a_few_steps(adapted, batch: dict, steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for _, p in adapted.trainable_parameters()], lr=1e-2)
    adapted.model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        adapted(**batch).loss.backward()
        optimizer.step()
    adapted.model.eval()


def test_remove_after_training_and_switching_gives_the_original_model(rt, tmp_path):
    model = tiny_llama()
    batch = rt.lm_batch()
    before = rt.capture_state(model)
    base_logits = model(**batch).logits.detach()
    adapted = adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    for task in ("sentiment", "qa_v2", "both"):
        adapted.use(task)
        train_a_few_steps(adapted, batch)
    adapted.use("qa_v2")  # a tuned lm_head copy in its slot, a prompt hook active
    assert model.lm_head.weight is not before.params["lm_head.weight"]
    assert adapted.remove() is model
    rt.assert_same_state(model, before)
    assert torch.equal(model(**batch).logits, base_logits)
    with pytest.raises(RuntimeApplyError, match="removed"):
        adapted.use("qa")
    # The model can be adapted again.
    adaptlang.apply(model, SPECS / "lora.adapt").remove()
    rt.assert_same_state(model, before)


def test_remove_while_merged_gives_the_original_model(rt):
    model = tiny_llama()
    before = rt.capture_state(model)
    adapted = adaptlang.apply(model, MIXED)
    randomize(adapted, "plain", "dora", "scale", "side")
    adapted.merge()
    adapted.remove()
    rt.assert_same_state(model, before)  # bit for bit: merging kept the originals


def failing_after(monkeypatch, owner: type, method: str, nth: int) -> None:
    """Makes ``owner.method`` raise on its ``nth`` call, after doing its work (a half-done step)."""
    original = getattr(owner, method)
    calls = [0]

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            raise ValueError("injected failure")
        return result

    monkeypatch.setattr(owner, method, wrapper)


def site_paths(plan: dict, kinds: tuple[str, ...]) -> list[str]:
    """Plan site paths of the given delta kinds, in the order apply visits them."""
    return [site["path"] for d in plan["deltas"].values() if d["kind"] in kinds for site in d["sites"]]


@pytest.mark.parametrize("nth", [1, 3, 12])
def test_failed_apply_at_the_nth_site_leaves_the_model_untouched(nth, rt, tmp_path, monkeypatch):
    model = tiny_llama()
    plan = adaptlang.compile(SPECS / "multitask.adapt", model).to_dict()
    expected_site = site_paths(plan, ("lora", "ia3", "adapter", "sparse"))[nth - 1]
    before = rt.capture_state(model)
    failing_after(monkeypatch, SiteModule, "add_part", nth)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    message = str(info.value)
    assert f"'{expected_site}'" in message and "injected failure" in message
    rt.assert_same_state(model, before)


@pytest.mark.parametrize("owner,method,where", [
    (PromptController, "add", "model.embed_tokens"),   # after the prompt module and hook were added
    (TuneSlots, "add", "lm_head"),                     # the last delta: every site is wrapped by now
])
def test_failed_apply_in_prompt_or_tune_leaves_the_model_untouched(owner, method, where, rt, tmp_path,
                                                                    monkeypatch):
    model = tiny_llama()
    before = rt.capture_state(model)
    failing_after(monkeypatch, owner, method, 1)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    assert f"'{where}'" in str(info.value)
    rt.assert_same_state(model, before)


def test_failed_quantization_leaves_the_model_untouched(rt, monkeypatch):
    model = tiny_llama()
    before = rt.capture_state(model)
    quantized = [q["path"] for q in adaptlang.compile(SPECS / "qlora.adapt", model).to_dict()["base"]["quantize"]]
    assert len(quantized) == 14
    failing_after(monkeypatch, SiteModule, "quantize", 9)
    with pytest.raises(RuntimeApplyError) as info:
        adaptlang.apply(model, SPECS / "qlora.adapt")
    assert f"'{quantized[8]}'" in str(info.value) and "injected failure" in str(info.value)
    rt.assert_same_state(model, before)


def test_failed_first_activation_leaves_the_model_untouched(rt, tmp_path, monkeypatch):
    import adaptlang.runtime.adapted as adapted_module

    model = tiny_llama()
    before = rt.capture_state(model)

    def broken(config, patch):
        raise RuntimeApplyError("injected failure while activating")

    monkeypatch.setattr(adapted_module, "activate_config", broken)
    with pytest.raises(RuntimeApplyError, match="injected failure"):
        adaptlang.apply(model, SPECS / "multitask.adapt", tokenizer=rt.word_tokenizer(tmp_path))
    rt.assert_same_state(model, before)


# ------------------------------------------------------------ quantization
def test_qlora_memory_report_counts_the_bytes_saved():
    model = tiny_llama()
    adapted = adaptlang.apply(model, SPECS / "qlora.adapt")
    report = adapted.memory_report()
    paths = [site["path"] for site in report["sites"]]
    assert len(paths) == 14 and paths[0] == Q0  # 7 Linears per layer, 2 layers
    # The base weights are stored quantized, not as dense parameters.
    dense = {name for name, _ in model.named_parameters()}
    assert not any(f"{path}.base.weight" in dense for path in paths)
    # fp32 before: per layer q, o 32x32; k, v 16x32; gate, up, down 64x32.
    numel = 2 * (2 * 1024 + 2 * 512 + 3 * 2048)
    assert report["bytes_before"] == 4 * numel
    # NF4 with double quantization (QLoRA): n/2 bytes of codes, one uint8 absmax code per 64-value
    # block, one fp32 scale per 256 blocks, one fp32 offset.
    def nf4(n: int) -> int:
        return n // 2 + n // 64 + 4 * -(-(n // 64) // 256) + 4

    assert report["bytes_after"] == 2 * (2 * nf4(1024) + 2 * nf4(512) + 3 * nf4(2048))
    assert report["bytes_saved"] == report["bytes_before"] - report["bytes_after"] > 0
    assert sum(s["bytes_before"] - s["bytes_after"] for s in report["sites"]) == report["bytes_saved"]
